"""SLTrain: stored counts, compact support, no dense W kept, both forwards agree, gradients, FLOPs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowdim_bench.api import PluginError
from lowdim_bench.registry import Registry
from lowdim_bench_builtin.methods import sltrain as sltrain_module
from lowdim_bench_builtin.methods.sltrain import SLTrainLinear, SLTrainMethod, _RebuildLinear, index_dtype
from method_helpers import ctx

DIMS = [(32, 48), (48, 40)]  # (in, out) of the replaced layers; the head 40 -> 10 stays dense


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 10))


def layers(model: nn.Module) -> list[SLTrainLinear]:
    return [m for m in model.modules() if isinstance(m, SLTrainLinear)]


def stored(model: nn.Module) -> int:
    """Parameters plus floating-point buffers (the integer support index is counted in bytes)."""
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())


def fill_b(model: nn.Module) -> None:
    """B is zero at init; give it values so the low-rank part matters."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in layers(model):
            m.B.copy_(0.1 * torch.randn(m.B.shape, generator=g))


def test_registers_through_hook() -> None:
    reg = Registry.from_objects({"sltrain": sltrain_module})
    assert reg.method("sltrain").cls is SLTrainMethod
    assert SLTrainMethod.defaults["delta"] == 0.03 and SLTrainMethod.defaults["alpha"] == 32.0


@pytest.mark.parametrize("delta", [0.03, 0.25])
def test_stored_params_match_formula(delta: float) -> None:
    r = 4
    new = SLTrainMethod(delta=delta).apply(mlp(), r, ctx())
    expected = sum(r * (n + m) + math.floor(delta * m * n) + m for n, m in DIMS) + 40 * 10 + 10
    assert stored(new) == expected
    assert sum(p.numel() for p in new.parameters() if p.requires_grad) == expected
    assert isinstance(new[4], nn.Linear)  # the head (last Linear) stays dense


def test_no_dense_weight_is_stored_and_index_is_compact() -> None:
    new = SLTrainMethod(delta=0.1).apply(mlp(), 3, ctx())
    for layer in layers(new):
        mn = layer.in_features * layer.out_features
        for t in [*layer.parameters(), *layer.buffers()]:
            assert t.numel() < mn, tuple(t.shape)
        assert layer.indices.dtype == torch.int16  # 48 * 40 < 2**15
        assert layer.indices.numel() == math.floor(0.1 * mn)
        assert layer.indices.element_size() * layer.indices.numel() == 2 * layer.nnz
    assert index_dtype(2 ** 15) == torch.int16 and index_dtype(2 ** 15 + 1) == torch.int32
    assert index_dtype(2 ** 31) == torch.int32 and index_dtype(2 ** 31 + 1) == torch.int64


def test_support_is_sorted_unique_seeded_and_independent_of_rank() -> None:
    a = layers(SLTrainMethod().apply(mlp(), 2, ctx(5)))
    b = layers(SLTrainMethod().apply(mlp(), 7, ctx(5)))
    c = layers(SLTrainMethod().apply(mlp(), 2, ctx(6)))
    for la, lb, lc in zip(a, b, c):
        idx = la.indices.long()
        assert torch.all(idx[1:] > idx[:-1])  # sorted and distinct
        assert torch.equal(la.indices, lb.indices)
        assert not torch.equal(la.indices, lc.indices)
    assert not torch.equal(a[0].indices, a[1].indices[: a[0].nnz])  # layers draw their own supports


def test_init_follows_the_official_code() -> None:
    layer = layers(SLTrainMethod(delta=0.2).apply(mlp(), 6, ctx()))[0]
    bound = 1 / math.sqrt(layer.in_features)
    assert torch.count_nonzero(layer.B) == 0
    assert 0.5 * bound < layer.A.abs().max() <= bound  # kaiming_uniform(a=sqrt 5) on fan_in n
    assert 0.5 * bound < layer.values.abs().max() <= bound
    w = torch.zeros(layer.out_features * layer.in_features)
    w[layer.indices.long()] = layer.values.detach()
    torch.testing.assert_close(layer.dense_weight().detach(), w.view(layer.out_features, -1))  # W = S at start
    assert layer.scale == 32.0 / 6


def copy_to_rebuild(model: nn.Module) -> nn.Module:
    other = SLTrainMethod(impl="rebuild").apply(mlp(), layers(model)[0].rank, ctx())
    other.load_state_dict(model.state_dict())
    return other


def test_both_impls_give_the_same_output_and_gradients() -> None:
    fac = SLTrainMethod(impl="factored").apply(mlp(), 3, ctx())
    fill_b(fac)
    reb = copy_to_rebuild(fac)
    assert layers(reb)[0].impl == "rebuild"
    x = torch.randn(2, 5, 32)  # leading dims are flattened into tokens
    y_fac, y_reb = fac(x), reb(x)
    torch.testing.assert_close(y_fac, y_reb, rtol=1e-5, atol=1e-6)
    y_fac.pow(2).sum().backward()
    y_reb.pow(2).sum().backward()
    for (name, p), q in zip(fac.named_parameters(), reb.parameters()):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)  # sums in another order
    for layer in layers(fac):
        assert layer.values.grad.abs().sum() > 0


@pytest.mark.parametrize("impl", ["factored", "rebuild"])
def test_gradients_match_a_dense_reference(impl: str) -> None:
    gen = torch.Generator().manual_seed(0)
    support = torch.randperm(6 * 5, generator=gen)[:8].sort().values
    layer = SLTrainLinear(5, 6, 2, 4.0, support, torch.randn(6, dtype=torch.float64), impl, gen, dtype=torch.float64)
    with torch.no_grad():
        layer.B.normal_(generator=gen)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    params = [x, layer.A, layer.B, layer.values, layer.bias]
    got = torch.autograd.grad(layer(x).sin().sum(), params)
    ref = torch.autograd.grad(F.linear(x, layer.dense_weight(), layer.bias).sin().sum(), params)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)
    if impl == "rebuild":
        assert torch.autograd.gradcheck(
            lambda *t: _RebuildLinear.apply(*t, layer.indices, layer.scale),
            (x, layer.A, layer.B, layer.values))


def test_rebuild_saves_no_dense_weight() -> None:
    layer = layers(SLTrainMethod(impl="rebuild").apply(mlp(), 3, ctx()))[0]
    x = torch.randn(4, 32)
    fn = layer(x).grad_fn
    while not isinstance(fn, torch.autograd.function.BackwardCFunction):
        fn = fn.next_functions[0][0]
    saved = fn.saved_tensors
    assert len(saved) == 5
    assert [tuple(t.shape) for t in saved] == [(4, 32), (3, 32), (48, 3), (layer.nnz,), (layer.nnz,)]


def test_factored_flops_count_the_low_rank_part_not_a_dense_sparse_product() -> None:
    batch, r = 7, 3
    x = torch.randn(batch, 32)
    new = SLTrainMethod().apply(mlp(), r, ctx())
    with FlopCounterMode(display=False) as fc:
        new(x)
    low_rank = sum(2 * batch * r * (n + m) for n, m in DIMS)
    head = 2 * batch * 40 * 10
    # torch 2.13 counts a COO sparse.mm as 0; the harness's counter fills 2 nnz per token.
    assert fc.get_total_flops() == low_rank + head
    assert fc.get_total_flops() < low_rank + head + sum(2 * batch * m * n for n, m in DIMS)


def test_rebuild_flops_executed_and_ideal() -> None:
    batch, r = 7, 3
    x = torch.randn(batch, 32)
    new = SLTrainMethod(impl="rebuild").apply(mlp(), r, ctx())
    with FlopCounterMode(display=False) as fc:
        new(x)
    executed = sum(2 * m * r * n + 2 * batch * m * n for n, m in DIMS) + 2 * batch * 40 * 10
    assert fc.get_total_flops() == executed
    layer = layers(new)[0]
    assert layer.ideal_flops(x) == 2 * batch * (r * (32 + 48) + math.floor(0.03 * 32 * 48))


def test_counts_are_monotone_in_rank_and_knob_range() -> None:
    method = SLTrainMethod()
    assert method.knob_range(mlp()) == (1, 40)
    counts = [stored(method.apply(mlp(), r, ctx())) for r in range(1, 41, 3)]
    assert all(a < b for a, b in zip(counts, counts[1:]))


def test_head_rule_and_skip_modules() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(30, 16)
            self.up = nn.Linear(16, 32)
            self.down = nn.Linear(32, 16)
            self.lm_head = nn.Linear(16, 30)
            self.extra = nn.Linear(16, 16)  # registered after the head: not the head by name rule

    new = SLTrainMethod().apply(Net(), 2, ctx())
    assert isinstance(new.lm_head, nn.Linear) and isinstance(new.emb, nn.Embedding)
    assert all(isinstance(getattr(new, n), SLTrainLinear) for n in ("up", "down", "extra"))
    explicit = SLTrainMethod(skip_modules=["down"]).apply(Net(), 2, ctx())
    assert isinstance(explicit.down, nn.Linear) and isinstance(explicit.lm_head, SLTrainLinear)
    with pytest.raises(PluginError, match="nope"):
        SLTrainMethod(skip_modules=["nope"]).apply(Net(), 2, ctx())
    with pytest.raises(PluginError):
        SLTrainMethod(impl="csr")


def test_apply_leaves_the_model_untouched() -> None:
    base = mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    SLTrainMethod().apply(base, 2, ctx())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert not layers(base)


def test_transformer_layer_fast_path_sees_the_rebuilt_weight() -> None:
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
    new = SLTrainMethod(delta=0.2, skip_modules=[]).apply(model, 3, ctx())
    assert isinstance(new.linear1, SLTrainLinear) and isinstance(new.self_attn.out_proj, nn.Linear)
    fill_b(new)
    new.eval()
    x = torch.randn(2, 5, 16)
    slow = new(x)
    with torch.no_grad():
        torch.testing.assert_close(new(x), slow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["factored", "rebuild"])
def test_delta_zero_is_plain_low_rank(impl: str) -> None:
    r = 3
    new = SLTrainMethod(delta=0.0, impl=impl).apply(mlp(), r, ctx())
    assert all(layer.nnz == 0 for layer in layers(new))
    assert stored(new) == sum(r * (n + m) + m for n, m in DIMS) + 40 * 10 + 10
    fill_b(new)
    x = torch.randn(4, 32)
    new(x).sum().backward()
    first = layers(new)[0]
    torch.testing.assert_close(first(x), F.linear(x, first.B @ first.A * first.scale, first.bias))


def test_harness_counter_counts_the_sparse_part_by_nonzeros() -> None:
    """Through lowdim_bench.measure.flops (which fills torch's COO hole): executed == ideal ==
    2 B (r (m + n) + nnz) for the factored form; the rebuild form executes more, ideal the same."""
    from lowdim_bench.measure.flops import forward_flops

    m, n, r, batch = 96, 64, 4, 5
    for impl in ("factored", "rebuild"):
        model = nn.Sequential(nn.Linear(n, m), nn.ReLU(), nn.Linear(m, 3))
        new = SLTrainMethod(impl=impl).apply(model, r, ctx())
        layer = new[0]
        count = forward_flops(new, (torch.randn(batch, n),))
        ideal = 2 * batch * (r * (m + n) + layer.nnz) + 2 * batch * m * 3
        assert count.ideal == ideal
        if impl == "factored":
            assert count.executed == ideal
        else:
            assert count.executed > ideal
