"""intrinsic and said: identity at init, only z trains, counts, FLOPs, budgets, merged inference."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lowdim_bench.api import PluginError
from lowdim_bench.measure.flops import forward_flops, train_step_flops
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run import budget as budget_mod
from lowdim_bench_builtin.methods import intrinsic as intrinsic_module
from lowdim_bench_builtin.methods import said as said_module
from lowdim_bench_builtin.methods.intrinsic import IntrinsicMethod, IntrinsicModel
from lowdim_bench_builtin.methods.said import SaidMethod
from method_helpers import ctx

PROJ = ["dense", "sparse", "fastfood"]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 5))


D_MLP = 12 * 20 + 20 + 20 * 5 + 5  # 365
M_MLP = 4


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 6)
        self.out = nn.Linear(6, 7, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids))


def perturb(model: IntrinsicModel, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.z.copy_(torch.randn(model.z.shape, generator=g))
        if model.scales is not None:
            model.scales.copy_(torch.rand(model.scales.shape, generator=g) + 0.5)


def test_register_through_hooks_with_their_kinds() -> None:
    reg = Registry.from_objects({"intrinsic": intrinsic_module, "said": said_module})
    assert reg.method("intrinsic").cls is IntrinsicMethod and reg.method("said").cls is SaidMethod
    assert IntrinsicMethod.supported_kinds() == ("train", "adapt")
    assert SaidMethod.supported_kinds() == ("adapt",)
    assert IntrinsicMethod.knob.name == SaidMethod.knob.name == "dim"


@pytest.mark.parametrize("proj", PROJ)
@pytest.mark.parametrize("make", [mlp, convnet])
def test_identity_at_step_zero_exactly(proj: str, make) -> None:
    base = make()
    base.eval()
    x = torch.randn(4, 12) if make is mlp else torch.randn(4, 3, 4, 4)
    for method in (IntrinsicMethod(projection=proj), SaidMethod(projection=proj)):
        new = method.apply(base, 30, ctx())
        new.eval()
        assert torch.equal(new(x), base(x)), (proj, method.name)


@pytest.mark.parametrize("proj", PROJ)
def test_counts_trainable_d_stored_d_plus_d(proj: str) -> None:
    new = IntrinsicMethod(projection=proj).apply(mlp(), 17, ctx())
    c = count_params(new)
    assert (c.trainable, c.total, c.stored) == (17, D_MLP + 17, D_MLP + 17)
    assert c.stored_bytes == 4 * (D_MLP + 17) and c.index_bytes == 0  # P is regenerated, not stored
    assert [n for n, p in new.named_parameters() if p.requires_grad] == ["z"]


def test_said_counts_lambdas_in_d() -> None:
    new = SaidMethod().apply(mlp(), 17, ctx())
    assert new.z.numel() == 17 - M_MLP and new.scales.numel() == M_MLP
    assert torch.equal(new.scales.detach(), torch.ones(M_MLP))  # lambda init 1
    assert count_params(new).trainable == 17 == new.d
    assert sorted(n for n, p in new.named_parameters() if p.requires_grad) == ["scales", "z"]
    with pytest.raises(PluginError, match=r"dim must be an integer >= 5, got 4"):
        SaidMethod().apply(mlp(), M_MLP, ctx())
    assert SaidMethod().knob_range(mlp()) == (M_MLP + 1, D_MLP)


def test_said_offset_is_lambda_times_the_tensor_slice() -> None:
    base = mlp()
    new = SaidMethod(projection="dense").apply(base, 20, ctx())
    perturb(new)
    with torch.no_grad():
        flat = new.projection(new.z)
        eff = new.effective_parameters()
    start = 0
    for i, (name, p0) in enumerate(base.named_parameters()):
        part = flat[start:start + p0.numel()].view(p0.shape)
        start += p0.numel()
        assert torch.allclose(eff[name], p0 + new.scales[i].detach() * part, atol=1e-6)


@pytest.mark.parametrize("proj", PROJ)
def test_only_z_gets_gradient_and_a_step_moves_the_model_not_theta0(proj: str) -> None:
    base = mlp()
    new = IntrinsicMethod(projection=proj).apply(base, 10, ctx())
    theta0 = {n: p.detach().clone() for n, p in new.base.named_parameters()}
    x = torch.randn(8, 12)
    before = new(x).detach()
    opt = torch.optim.SGD([p for p in new.parameters() if p.requires_grad], lr=0.5)
    new(x).pow(2).sum().backward()
    assert new.z.grad is not None and new.z.grad.abs().sum() > 0
    assert all(p.grad is None for p in new.base.parameters())
    opt.step()
    assert not torch.allclose(new(x), before)
    assert all(torch.equal(p, theta0[n]) for n, p in new.base.named_parameters())


def test_apply_never_mutates_the_base_and_uses_its_weights_as_theta0() -> None:
    base = mlp()
    snapshot = {n: p.detach().clone() for n, p in base.named_parameters()}
    new = IntrinsicMethod().apply(base, 10, ctx())
    perturb(new)
    new(torch.randn(2, 12)).sum().backward()
    assert all(torch.equal(p, snapshot[n]) and p.requires_grad for n, p in base.named_parameters())
    assert all(torch.equal(p, snapshot[n]) for n, p in new.base.named_parameters())


def test_tied_weights_counted_once_and_share_one_offset() -> None:
    base = Tied()
    new = IntrinsicMethod(projection="dense").apply(base, 5, ctx())
    assert new.D == 7 * 6
    ids = torch.tensor([[0, 3, 6]])
    assert torch.equal(new(ids), base(ids))
    perturb(new)
    eff = new.effective_parameters()
    assert list(eff) == ["emb.weight"]
    merged = new.merged()
    assert merged.out.weight is merged.emb.weight
    assert torch.allclose(merged(ids), new(ids), atol=1e-6)


@pytest.mark.parametrize("method", [IntrinsicMethod(projection="fastfood", merged_inference=True),
                                    SaidMethod(projection="sparse", merged_inference=True)])
def test_merged_inference_is_a_plain_model_with_the_same_outputs(method) -> None:
    new = method.apply(mlp(), 25, ctx())
    perturb(new)
    x = torch.randn(5, 12)
    deployed = method.for_inference(new)
    assert type(deployed) is nn.Sequential
    assert torch.allclose(deployed(x), new(x), atol=1e-5)
    assert IntrinsicMethod().for_inference(new) is new  # default: the training form, projection included


def test_forward_flops_are_the_model_s_plus_the_projection_s() -> None:
    base = mlp()
    x = torch.randn(8, 12)
    model_flops = 2 * 8 * (12 * 20 + 20 * 5)
    assert forward_flops(base, (x,)).executed == model_flops
    dense = IntrinsicMethod(projection="dense").apply(base, 40, ctx())
    f = forward_flops(dense, (x,))
    assert f.executed == f.ideal == model_flops + 2 * D_MLP * 40
    sparse = IntrinsicMethod(projection="sparse").apply(base, 40, ctx())
    f = forward_flops(sparse, (x,))
    assert f.executed == f.ideal == model_flops + 2 * sparse.projection.nnz
    ff = IntrinsicMethod(projection="fastfood").apply(base, 40, ctx())
    f = forward_flops(ff, (x,))
    L = 512  # next power of two above D = 365
    assert f.executed == model_flops  # the FWHT is adds and diagonal products: no matmul kernel
    assert f.ideal == model_flops + 2 * L * 9 + 2 * L


def test_train_step_flops_dense_model_backward_plus_projection_both_ways() -> None:
    base = mlp()
    x, y = torch.randn(8, 12), torch.randint(0, 5, (8,))
    loss = lambda m: (lambda: nn.functional.cross_entropy(m(x), y))  # noqa: E731
    dense_step = train_step_flops(base, loss(base)).executed  # full training of every weight
    new = IntrinsicMethod(projection="dense").apply(base, 40, ctx())
    t = train_step_flops(new, loss(new))
    assert t.executed == dense_step + 2 * (2 * D_MLP * 40)  # P z forward, P^T g backward


def test_adapt_budget_search_hits_d_over_d_within_one_step() -> None:
    base = mlp()
    for method in (IntrinsicMethod(), SaidMethod()):
        for budget in (0.05, 0.2):
            sized = budget_mod.search(method, base, "adapt", budget, D_MLP, ctx())
            assert sized.fraction <= budget < (sized.knob + 1) / D_MLP
            assert sized.fraction == sized.knob / D_MLP


def test_train_budget_counts_stored_theta0_so_every_d_is_over_budget() -> None:
    """Documented: under kind train stored = D + d > D, so budgets cannot be met; use knobs."""
    sized = budget_mod.apply_sized(IntrinsicMethod(), mlp(), "train", 0.5, None, D_MLP, ctx())
    assert sized.over_budget and sized.knob == 1 and sized.fraction == (D_MLP + 1) / D_MLP
    sized = budget_mod.apply_sized(IntrinsicMethod(), mlp(), "train", None, 30, D_MLP, ctx())
    assert sized.knob == 30 and count_params(sized.model).trainable == 30


def test_knob_range_caps_dense_and_sparse_by_bytes() -> None:
    assert IntrinsicMethod(projection="fastfood").knob_range(mlp()) == (1, D_MLP)
    assert IntrinsicMethod(projection="dense", max_projection_bytes=4 * D_MLP * 10).knob_range(mlp()) == (1, 10)
    with pytest.raises(PluginError, match=r"D=365 x d=11 needs"):
        IntrinsicMethod(projection="dense", max_projection_bytes=4 * D_MLP * 10).apply(mlp(), 11, ctx())


def test_bad_hyper_parameters_and_sizes_are_refused() -> None:
    with pytest.raises(PluginError, match=r"projection = 'gauss' is not a valid 'dense' \| 'sparse' \| 'fastfood'"):
        IntrinsicMethod(projection="gauss")
    with pytest.raises(PluginError, match=r"max_projection_bytes = -1 is outside \[1, inf\]"):
        IntrinsicMethod(max_projection_bytes=-1)
    with pytest.raises(PluginError, match=r"dim must be an integer >= 1, got 2.5"):
        IntrinsicMethod().apply(mlp(), 2.5, ctx())
    with pytest.raises(PluginError, match=r"dim d=366 exceeds the model's D=365"):
        IntrinsicMethod().apply(mlp(), 366, ctx())


def test_same_seed_same_projection_other_seed_other() -> None:
    base = mlp()
    a = IntrinsicMethod(projection="dense").apply(base, 8, ctx(3))
    b = IntrinsicMethod(projection="dense").apply(base, 8, ctx(3))
    c = IntrinsicMethod(projection="dense").apply(base, 8, ctx(4))
    assert torch.equal(a.projection.matrix, b.projection.matrix)
    assert not torch.equal(a.projection.matrix, c.projection.matrix)
