"""LR2VQ: w = P z with k-means on z; equals pq at d~ = m; counts, bits, FLOPs, gradients, budget."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowdim_bench.api import PluginError
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run import budget
from lowdim_bench_builtin.methods import lr2vq as lr2vq_module
from lowdim_bench_builtin.methods._quantise import VQLinear, to_subvectors
from lowdim_bench_builtin.methods.lr2vq import Lr2vqMethod, low_rank_representation
from lowdim_bench_builtin.methods.pq import PqMethod
from method_helpers import ctx

SIZES = [(16, 24, True), (24, 32, False), (32, 8, True)]  # (d_in, d_out, bias)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for d_in, d_out, bias in SIZES:
        layers += [nn.Linear(d_in, d_out, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_registers_through_hook() -> None:
    reg = Registry.from_objects({"lr2vq": lr2vq_module})
    assert reg.method("lr2vq").cls is Lr2vqMethod
    assert Lr2vqMethod.kind == "compress" and Lr2vqMethod.defaults["d_tilde"] == 4


def test_low_rank_representation_is_the_best_rank_d_fit() -> None:
    g = torch.Generator().manual_seed(0)
    sub = torch.randn(200, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    z, p = low_rank_representation(sub, 3)
    assert z.shape == (200, 3) and p.shape == (8, 3)
    torch.testing.assert_close(p.t() @ p, torch.eye(3, dtype=torch.float64))
    tail = torch.linalg.svdvals(sub)[3:].pow(2).sum()
    torch.testing.assert_close((sub - z @ p.t()).pow(2).sum(), tail)


def test_one_centre_per_subvector_leaves_only_the_low_rank_error() -> None:
    base, m, d = mlp(), 4, 2
    new = Lr2vqMethod(lowrank_steps=0, m=m, d_tilde=d, skip_above_break_even=False).apply(base, 10_000, ctx())
    for i in (0, 2, 4):
        sub = to_subvectors(base[i].weight.detach().double(), m)
        tail = torch.linalg.svdvals(sub)[d:].pow(2).sum()
        err = (new[i].weight.detach().double() - base[i].weight.detach().double()).pow(2).sum()
        torch.testing.assert_close(err, tail, rtol=1e-4, atol=1e-8)


def test_equals_pq_when_d_tilde_is_m() -> None:
    base = mlp()
    for k in (4, 16):
        lr = Lr2vqMethod(lowrank_steps=0, m=4, d_tilde=4, skip_above_break_even=False).apply(base, k, ctx())
        pq = PqMethod(m=4, skip_above_break_even=False).apply(base, k, ctx())
        for i in (0, 2, 4):
            assert torch.equal(lr[i].codes, pq[i].codes)
            torch.testing.assert_close(lr[i].weight, pq[i].weight, rtol=0, atol=1e-6)
            assert lr[i].ideal_bits() - pq[i].ideal_bits() == 32 * 4 * 4  # only P (m x d~) more


def test_counts_bytes_and_bits_match_the_formula() -> None:
    m, d, k = 4, 2, 8
    new = Lr2vqMethod(lowrank_steps=0, m=m, d_tilde=d, skip_above_break_even=False).apply(mlp(), k, ctx())
    n = [d_in * d_out // m for d_in, d_out, _ in SIZES]
    floats = sum(k * d + m * d + (d_out if bias else 0) for _, d_out, bias in SIZES)
    c = count_params(new)
    assert c.total == c.stored == c.trainable == floats
    assert c.index_bytes == sum(n) and c.stored_bytes == 4 * floats + sum(n)
    assert new[0].codebook.shape == (k, d) and new[0].projection.shape == (m, d)
    assert sum(new[i].ideal_bits() for i in (0, 2, 4)) == sum(n) * math.ceil(math.log2(k)) + 32 * floats
    # same code bits as pq at the same (k, m)
    pq = PqMethod(m=m, skip_above_break_even=False).apply(mlp(), k, ctx())
    assert pq[2].ideal_bits() - 32 * pq[2].float_elements() == new[2].ideal_bits() - 32 * new[2].float_elements()


def test_error_decreases_with_k() -> None:
    base = mlp()

    @torch.no_grad()
    def err(k: int) -> float:
        new = Lr2vqMethod(lowrank_steps=0, m=4, d_tilde=2, skip_above_break_even=False).apply(base, k, ctx())
        return float(sum((new[i].weight - base[i].weight).pow(2).sum() for i in (0, 2, 4)))

    errs = [err(k) for k in (2, 8, 32, 192)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_forward_flops_add_the_codebook_decode() -> None:
    batch, m, d, k = 5, 4, 2, 8
    new = Lr2vqMethod(lowrank_steps=0, m=m, d_tilde=d, skip_above_break_even=False).apply(mlp(), k, ctx())
    with FlopCounterMode(display=False) as fc:
        new(torch.randn(batch, 16))
    dense = 2 * batch * sum(d_in * d_out for d_in, d_out, _ in SIZES)
    assert fc.get_total_flops() == dense + 3 * 2 * k * d * m


def test_gradients_reach_codebook_and_projection_with_codes_fixed() -> None:
    new = Lr2vqMethod(lowrank_steps=0, m=4, d_tilde=2).apply(mlp(), 8, ctx()).train()
    layer = new[2]
    codes = layer.codes.clone()
    new(torch.randn(8, 16)).pow(2).sum().backward()
    assert layer.codebook.grad.abs().sum() > 0 and layer.projection.grad.abs().sum() > 0
    assert not layer.codes.is_floating_point() and not layer.codes.requires_grad
    torch.optim.SGD([p for p in new.parameters() if p.requires_grad], lr=0.1).step()
    assert torch.equal(layer.codes, codes)
    torch.testing.assert_close(layer.weight, (layer.codebook @ layer.projection.t())[codes.long()].reshape(32, 24))


def test_deterministic_per_seed() -> None:
    base = mlp()
    a, b = (Lr2vqMethod(lowrank_steps=0, m=4, d_tilde=2).apply(base, 8, ctx(0)) for _ in range(2))
    assert torch.equal(a[2].codes, b[2].codes) and torch.equal(a[2].codebook, b[2].codebook)
    assert torch.equal(a[2].projection, b[2].projection)
    assert not torch.equal(a[2].codebook, Lr2vqMethod(lowrank_steps=0, m=4, d_tilde=2).apply(base, 8, ctx(1))[2].codebook)


def test_counts_monotone_and_budget_search_within_one_step() -> None:
    base, method = mlp(), Lr2vqMethod(lowrank_steps=0, m=4, d_tilde=2)
    assert method.knob_range(base) == (1, 192)
    ks = [1, 3, 10, 40, 100, 191, 192]
    stored = [count_params(method.apply(base, k, ctx())).stored for k in ks]
    assert all(a <= b for a, b in zip(stored, stored[1:])) and stored[0] < stored[-1]
    dense = count_params(base).stored
    for target in (0.05, 0.2):
        sized = budget.search(method, base, "compress", target, dense, ctx())
        assert sized.fraction <= target
        assert count_params(method.apply(base, int(sized.knob) + 1, ctx())).stored / dense > target


def test_apply_leaves_the_model_untouched() -> None:
    base = mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    new = Lr2vqMethod(lowrank_steps=0, m=4, d_tilde=2).apply(base, 8, ctx())
    assert isinstance(new[0], VQLinear)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert all(isinstance(base[i], nn.Linear) for i in (0, 2, 4))


def test_bad_hparams_are_errors() -> None:
    with pytest.raises(PluginError, match="d_tilde"):
        Lr2vqMethod(m=4, d_tilde=5)
    with pytest.raises(PluginError, match="d_tilde"):
        Lr2vqMethod(d_tilde=0)
    with pytest.raises(PluginError, match="kmeans_iters"):
        Lr2vqMethod(kmeans_iters=-1)
    with pytest.raises(PluginError, match="unknown"):
        Lr2vqMethod(rank=3)


# ---- the low-rank training stage ----------------------------------------------------------------
def digits_setup():
    from lowdim_bench.api import ApplyContext
    from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask

    task = DigitsTask(hidden=16, depth=1, shift="none")
    torch.manual_seed(0)
    return task, task.make_model(0), ApplyContext(seed=0, device=torch.device("cpu"), task=task)


def test_the_low_rank_stage_trains_w_equals_p_z_on_the_task_loss(monkeypatch) -> None:
    task, base, c = digits_setup()
    calls = []
    real = lr2vq_module.train_stage
    monkeypatch.setattr(lr2vq_module, "train_stage", lambda *a, **k: calls.append(1) or real(*a, **k))
    method = Lr2vqMethod(m=8, d_tilde=2, lowrank_steps=30, lowrank_lr=1e-2, skip_above_break_even=False)
    staged, reps = method._stage(base, c)
    assert set(reps) == {"body.0", "head"} and reps["body.0"][0].shape == (16 * 64 // 8, 2)
    closed = Lr2vqMethod(m=8, d_tilde=2, lowrank_steps=0, skip_above_break_even=False)
    pca = closed.apply(base, 10_000, c)  # one centre per subvector: exactly the PCA fit
    batch = next(task.batches(task.splits("target", 0)["train"], 512, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        assert task.loss(staged, batch) < task.loss(pca, batch)  # trained on the loss, not on ||W - W_r||
        z, p = reps["body.0"]
        torch.testing.assert_close(staged.body[0].weight.double(), (z @ p.t()).reshape(16, 64), rtol=1e-5, atol=1e-6)
    a, b = method.apply(base, 8, c), method.apply(base, 16, c)  # the stage does not depend on k: run once
    assert calls == [1] and a.body[0].k == 8 and b.body[0].k == 16
    torch.testing.assert_close(a.body[0].projection.double(), reps["body.0"][1].to(a.body[0].projection.dtype).double())
    assert all(torch.equal(x, y) for x, y in zip(base.state_dict().values(), digits_setup()[1].state_dict().values()))


def test_the_stage_needs_a_task() -> None:
    with pytest.raises(PluginError, match="lowrank_steps = 0"):
        Lr2vqMethod(m=4, d_tilde=2).apply(mlp(), 8, ctx())
