"""Maestro: SVD init, counts and FLOPs by the formula, the hierarchical group lasso, ordered dropout
(never silently off), prefix pruning that shrinks the optimizer state, singular-value recovery."""
from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError, Quality, Recipe, Task
from lowdim_bench.measure.flops import forward_flops
from lowdim_bench.measure.params import count_params
from lowdim_bench.run.train import train
from lowdim_bench.testing import check_method
from lowdim_bench_builtin.methods.maestro import MaestroLinear, MaestroMethod, decompose, maestro_layers
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
from method_helpers import ctx, mlp

DIMS = [(20, 30), (30, 7)]  # (in, out) of mlp()'s Linears


def test_counts_and_flops_follow_the_formula() -> None:
    r, batch = 3, 5
    new = MaestroMethod().apply(mlp(), r, ctx())
    c = count_params(new)
    expected = sum(r * (i + o) + o for i, o in DIMS)
    assert c.stored == c.total == c.trainable == expected
    assert [m.rank for m in maestro_layers(new)] == [3, 3]
    x = torch.randn(batch, 20)
    assert forward_flops(new.eval(), (x,)).executed == sum(2 * batch * r * (i + o) for i, o in DIMS)


def test_layers_at_or_above_break_even_stay_dense() -> None:
    new = MaestroMethod().apply(mlp(), 6, ctx())  # 6 * 37 = 222 >= 30 * 7 = 210: the second stays dense
    assert isinstance(new[0], MaestroLinear) and isinstance(new[2], nn.Linear)
    with pytest.raises(PluginError, match="break-even"):
        MaestroMethod().apply(mlp(), 20, ctx())


def test_init_is_the_balanced_svd_of_the_weight() -> None:
    base = mlp()
    layer = decompose(base[0], 20)  # full rank: the product is the weight itself
    torch.testing.assert_close(layer.U @ layer.VT, base[0].weight, atol=1e-5, rtol=1e-5)
    s = torch.linalg.svdvals(base[0].weight.double()).float()
    torch.testing.assert_close(layer.importance(), s, atol=1e-5, rtol=1e-5)  # ||U_i|| ||V_i|| = sigma_i
    torch.testing.assert_close(layer.U.norm(dim=0), layer.VT.norm(dim=1), atol=1e-5, rtol=1e-5)
    x = torch.randn(4, 20)
    torch.testing.assert_close(layer(x), base[0](x), atol=1e-5, rtol=1e-5)
    assert torch.equal(layer.bias, base[0].bias) and layer.bias is not base[0].bias


def test_hierarchical_group_lasso_and_tail_importance() -> None:
    layer = decompose(mlp()[0], 5)
    expected = sum(layer.VT[i:].norm() + layer.U[:, i:].norm() for i in range(5))
    torch.testing.assert_close(layer.group_lasso(), expected)
    tail = layer.tail_importance()
    torch.testing.assert_close(tail, torch.stack([layer.VT[i:].norm() * layer.U[:, i:].norm() for i in range(5)]))
    assert torch.all(tail[1:] <= tail[:-1])  # non-increasing: a threshold keeps a prefix
    layer.group_lasso().backward()
    assert torch.isfinite(layer.U.grad).all() and torch.isfinite(layer.VT.grad).all()


def test_misspelt_option_is_an_error_not_silently_ignored() -> None:
    """Official pitfall: its script passes --sampler (the parser reads --od-sampler) through
    parse_known_args, so ordered dropout is silently off. A misspelt name must fail here."""
    with pytest.raises(PluginError, match="unknown hyper-parameter.*sampler"):
        MaestroMethod(sampler="per_layer")
    assert MaestroMethod().hparams["ordered_dropout"] is True  # on unless asked otherwise


def test_each_step_runs_one_partial_forward_with_a_prefix_of_one_layer() -> None:
    method = MaestroMethod(lambda_gl=0.0)
    model = method.apply(mlp(), 4, ctx())
    seen: list[list[int | None]] = []
    model.register_forward_pre_hook(lambda m, a: seen.append([l.od_rank for l in maestro_layers(model)]))
    torch.manual_seed(0)
    x = torch.randn(8, 20)
    model.train()
    full = model(x)
    term = method.extra_loss(model)
    assert len(seen) == 1 + 1  # the full forward, then exactly one partial forward
    assert seen[0] == [None, None]
    truncated = [k for k in seen[1] if k is not None]
    assert len(truncated) == 1 and 1 <= truncated[0] <= 4
    assert float(term) > 0  # the partial output is scored against the full one
    assert all(l.od_rank is None for l in maestro_layers(model))  # restored afterwards
    # every (layer, k) pair is drawn: 2 layers x 4 widths
    pairs = set()
    for _ in range(300):
        seen.clear()
        model(x)
        method.extra_loss(model)
        pairs.add(tuple(seen[1]))
    assert len(pairs) == 8
    off = MaestroMethod(lambda_gl=0.0, ordered_dropout=False)
    model2 = off.apply(mlp(), 4, ctx())
    model2.train()
    model2(x)
    assert float(off.extra_loss(model2)) == 0.0
    del full


def test_soft_target_is_the_full_output() -> None:
    method = MaestroMethod(lambda_gl=0.0)
    model = method.apply(mlp(), 4, ctx())
    model.train()
    x = torch.randn(6, 20)
    full = model(x).detach()
    torch.manual_seed(1)
    term = method.extra_loss(model)
    torch.manual_seed(1)
    pick = int(torch.randint(8, (1,)))
    layer, k = maestro_layers(model)[pick // 4], pick % 4 + 1
    layer.od_rank = k
    partial = model(x)
    layer.od_rank = None
    expected = -(full.softmax(-1) * partial.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(term, expected)


def test_pruning_keeps_a_prefix_and_shrinks_the_optimizer_state() -> None:
    method = MaestroMethod(threshold=0.5)
    model = method.apply(mlp(), 5, ctx())
    opt = method.configure_optimizer(model, 1e-3, 0.0)
    model.train()
    F.mse_loss(model(torch.randn(8, 20)), torch.randn(8, 7)).backward()
    opt.step()
    layer = maestro_layers(model)[0]
    with torch.no_grad():
        layer.VT[3:].mul_(1e-4)  # make the last two components negligible
        layer.U[:, 3:].mul_(1e-4)
    before = opt.state[layer.U]["exp_avg"].clone()
    assert method.prune(model)[0] == 3
    assert layer.VT.shape == (3, 20) and layer.U.shape == (30, 3)
    assert opt.state[layer.U]["exp_avg"].shape == (30, 3)
    torch.testing.assert_close(opt.state[layer.U]["exp_avg"], before[:, :3])
    opt.zero_grad()
    F.mse_loss(model(torch.randn(8, 20)), torch.randn(8, 7)).backward()
    opt.step()  # the optimizer still steps the shrunk parameters
    assert count_params(model).stored == 3 * 50 + 30 + maestro_layers(model)[1].rank * 37 + 7


def test_on_step_prunes_every_period() -> None:
    method = MaestroMethod(threshold=1e9, prune_every=3)
    model = method.apply(mlp(), 2, ctx())
    method.on_step(model, 0)
    assert [m.rank for m in maestro_layers(model)] == [2, 2]
    method.on_step(model, 2)
    assert [m.rank for m in maestro_layers(model)] == [0, 0]
    assert model(torch.randn(3, 20)).shape == (3, 7)  # rank 0: the bias alone


class LinearMap(Task):
    """y = A x for a fixed A (8 x 12) of rank 3 with singular values 4, 2, 1."""

    name = "linear-map"
    quality = Quality("mse", "MSE", False)
    singular_values = (4.0, 2.0, 1.0)

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        u, _ = torch.linalg.qr(torch.randn(8, 3, generator=g))
        v, _ = torch.linalg.qr(torch.randn(12, 3, generator=g))
        self.a = u @ torch.diag(torch.tensor(self.singular_values)) @ v.t()

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Linear(12, 8, bias=False)

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        return {"train": None, "val": None, "test": None}

    def batches(self, split: Any, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        while True:
            x = torch.randn(batch_size, 12, generator=generator)
            yield x, x @ self.a.t()

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x), y)


@pytest.mark.slow
def test_recovers_the_singular_values_of_a_known_rank_map() -> None:
    """The paper's linear check: ordered dropout orders the components by importance, the
    group lasso prunes the ones the map does not need, and ||U_i|| ||V_i|| are its singular values."""
    task = LinearMap()
    method = MaestroMethod(distill="mse", lambda_gl=5e-3, threshold=1e-2, prune_every=50,
                           skip_above_break_even=False)
    model = method.apply(task.make_model(0), 8, ApplyContext(seed=0, device=torch.device("cpu"), task=task))
    train(model, task, method, None, Recipe(steps=500, batch_size=64, lr=3e-2, grad_clip=None), 0,
          torch.device("cpu"))
    layer = model
    assert isinstance(layer, MaestroLinear) and layer.rank == 3
    torch.testing.assert_close(layer.importance(), torch.tensor(task.singular_values), atol=0.05, rtol=0.05)
    torch.testing.assert_close(layer.weight.detach(), task.a, atol=0.05, rtol=0)


def test_compress_starts_from_the_truncated_svd_of_the_trained_weight() -> None:
    base = mlp()
    new = MaestroMethod().apply(base, 2, ctx())
    u, s, vh = torch.linalg.svd(base[0].weight.detach().double(), full_matrices=False)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    torch.testing.assert_close(maestro_layers(new)[0].weight.detach().double(), best, atol=1e-5, rtol=1e-5)
    assert base[0].weight.requires_grad and isinstance(base[0], nn.Linear)  # the base is untouched


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "compress"])
def test_passes_the_conformance_kit(kind: str) -> None:
    results = check_method(MaestroMethod, DigitsTask(hidden=32), kind=kind, size=4)
    assert not [str(r) for r in results if r.failed]


def test_knob_bounds_the_budget_after_training() -> None:
    """Pruning only removes components, so the trained count never exceeds the applied one."""
    task = DigitsTask(hidden=32)
    method = MaestroMethod(lambda_gl=5e-2, threshold=0.05, prune_every=10)
    model = method.apply(task.make_model(0), 8, ApplyContext(seed=0, device=torch.device("cpu"), task=task))
    applied = count_params(model).stored
    train(model, task, method, task.splits("target", 0)["train"], Recipe(steps=40, batch_size=32, lr=3e-3), 0,
          torch.device("cpu"))
    assert count_params(model).stored <= applied
    assert max(m.rank for m in maestro_layers(copy.deepcopy(model))) <= 8
