"""Feature selection: the truly sparse SET layer, QuickSelection and its baselines, the scorer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lowdim_bench.api import PluginError
from lowdim_bench_builtin.solvers import TraceLog
from lowdim_bench_builtin.solvers._set_layer import SparseLinear
from lowdim_bench_builtin.solvers.quickselection import DenseAutoencoder, QuickSelection
from lowdim_bench_builtin.solvers.selection import FeatureData, FeatureRanking, FeatureSelection
from lowdim_bench_builtin.solvers.selection_baselines import LaplacianScore, VarianceSelector, laplacian_scores
from solver_helpers import gen, one_thread  # noqa: F401  (one_thread: autouse fixture)

MADELON = dict(dataset="madelon", samples=400, features=60, informative=5, redundant=5, trees=20)


def test_sparse_layer_computes_the_dense_product_and_its_gradients():
    layer = SparseLinear(30, 20, epsilon=2.0, generator=gen(0))
    layer.bias.data.normal_(generator=gen(1))
    x = torch.randn(7, 30, generator=gen(2), requires_grad=True)
    y = layer(x)
    w = layer.dense_weight().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y_ref = x_ref @ w.T + layer.bias.detach()
    assert torch.allclose(y, y_ref, atol=1e-6)
    g = torch.randn(7, 20, generator=gen(3))
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    rows, cols = layer.positions()
    assert torch.allclose(layer.values.grad, w.grad[rows, cols], atol=1e-5)  # only the stored entries get gradients
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    assert layer.values.grad.shape == (layer.nnz,)


class _Largest(TorchDispatchMode):
    """Remembers the largest strided tensor any op makes (sparse outputs count their values)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self.largest = max(self.largest, t.numel())
        return out


def test_training_step_never_builds_a_dense_weight_or_gradient():
    """torch's own sparse backward makes a dense n_out x n_in gradient; ours must not."""
    enc = SparseLinear(400, 300, epsilon=3.0, generator=gen(0))
    dec = SparseLinear(300, 400, epsilon=3.0, generator=gen(1))
    x = torch.randn(16, 400, generator=gen(2))
    with _Largest() as watch:
        loss = ((dec(torch.sigmoid(enc(x))) - x) ** 2).sum()
        loss.backward()
    assert enc.values.grad is not None and dec.values.grad is not None
    assert watch.largest <= 16 * 400  # the batch's activations; a dense weight would be 120,000


def test_layers_store_only_their_nonzeros():
    layer = SparseLinear(500, 1000, epsilon=13.0, generator=gen(0))
    assert layer.nnz == 13 * 1500
    sizes = {name: t.numel() for name, t in layer.state_dict().items()}
    assert sizes == {"values": 19500, "bias": 1000, "crow": 1001, "col": 19500, "t_crow": 501, "t_col": 19500,
                     "t_perm": 19500}
    rows, cols = layer.positions()
    assert torch.unique(rows * 500 + cols).numel() == layer.nnz  # distinct positions
    stored = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
    assert stored == 19500 * (4 + 4 + 4 + 4) + 1000 * 4 + (1001 + 501) * 4  # int32 indices, float32 values
    assert stored < 0.2 * 500 * 1000 * 4  # a fifth of one dense float32 weight


def test_set_evolution_removes_the_weights_closest_to_zero_on_each_side():
    layer = SparseLinear(50, 40, epsilon=2.0, generator=gen(0))  # 180 connections
    n = layer.nnz
    vals = torch.linspace(-1, 1, n + 1)
    vals = vals[vals != 0][:n]
    layer.values.data.copy_(vals[torch.randperm(n, generator=gen(1))])
    rows, cols = layer.positions()
    before = {(int(r), int(c)): float(v) for r, c, v in zip(rows, cols, layer.values.data)}
    momentum = layer.values.data.clone() * 10  # tag each connection's momentum by its value
    new_mom = layer.evolve(0.2, gen(2), momentum)
    rows, cols = layer.positions()
    after = {(int(r), int(c)): (float(v), float(m)) for r, c, v, m in zip(rows, cols, layer.values.data, new_mom)}
    assert layer.nnz == n and len(after) == n
    neg = sorted(v for v in before.values() if v < 0)
    pos = sorted(v for v in before.values() if v > 0)
    removed = {v for k, v in before.items() if k not in after or after[k][0] != v}
    expect = set(neg[len(neg) - int(0.2 * len(neg)):]) | set(pos[: int(0.2 * len(pos))])
    assert removed == expect
    for k, (v, m) in after.items():
        if k in before and before[k] == v:
            assert m == pytest.approx(10 * v)  # survivors keep their momentum
        else:
            assert m == 0.0 and abs(v) < 0.6  # new connections: momentum 0, N(0, 1) / 10 values


def test_quickselection_learns_and_reports_sparse_storage():
    prob = FeatureSelection(dataset="digits", trees=10)
    inst = prob.instance("val", 0)
    log = TraceLog()
    qs = QuickSelection(hidden=300, epochs=6, epsilon=13.0)
    sol = qs.solve(inst.data, 10, gen(), log)
    losses = log.column("loss")
    assert losses[-1] < 0.8 * losses[0]
    extras = {m.metric: m.value for m in sol.extras}
    assert extras["weights"] == 2 * 13 * (64 + 300)
    nnz = 13 * 364  # per layer; bytes: 4 per value, 3 x 4 per index (pattern, transposed, permutation)
    layer = lambda n_in, n_out: 16 * nnz + 4 * (n_out + 1) + 4 * (n_in + 1) + 4 * n_out
    assert extras["model_bytes"] == layer(64, 300) + layer(300, 64)  # only non-zeros (no dense tensor)
    assert len(sol.selected) == 10 and sol.importance.shape == (64,)
    assert np.array_equal(sol.selected, np.argsort(-sol.importance, kind="stable")[:10])
    assert prob.score(inst, sol)["accuracy"].value > 0.5  # 10 of 64 pixels, chance is 0.1


def test_dense_autoencoder_baseline_learns():
    inst = FeatureSelection(**MADELON).instance("val", 0)
    log = TraceLog()
    sol = DenseAutoencoder(hidden=100, epochs=20).solve(inst.data, 10, gen(), log)
    losses = log.column("loss")
    assert losses[-1] < 0.8 * losses[0]
    assert {m.metric: m.value for m in sol.extras}["weights"] == 2 * 60 * 100


def test_laplacian_score_matches_the_dense_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5))
    x[:, 2] = np.linspace(0, 1, 40) ** 2
    got = laplacian_scores(x, 4)
    from sklearn.neighbors import kneighbors_graph
    dist = kneighbors_graph(x, 4, mode="distance").toarray()
    dist = np.maximum(dist, dist.T)
    t = np.mean(dist[dist > 0] ** 2)
    s = np.where(dist > 0, np.exp(-dist**2 / t), 0.0)
    d = np.diag(s.sum(1))
    lap = d - s
    one = np.ones(40)
    for r in range(5):
        f = x[:, r] - (x[:, r] @ d @ one) / (one @ d @ one)
        assert got[r] == pytest.approx((f @ lap @ f) / (f @ d @ f), rel=1e-10)


def test_madelon_truth_is_what_the_scorer_rewards():
    prob = FeatureSelection(**MADELON)
    inst = prob.instance("test", 3)
    relevant = inst.truth["relevant"]
    assert len(relevant) == 10
    noise = np.setdiff1d(np.arange(60), relevant)[:10]
    oracle = prob.score(inst, FeatureRanking(relevant, np.zeros(60)))
    blind = prob.score(inst, FeatureRanking(noise, np.zeros(60)))
    assert oracle["relevant_recall"].value == 1.0 and blind["relevant_recall"].value == 0.0
    assert oracle["accuracy"].value > blind["accuracy"].value + 0.1
    plain = FeatureSelection(**MADELON, rescale=False).instance("test", 3)
    assert VarianceSelector().solve(plain.data, 10, gen()).selected.tolist() != [] and \
        set(VarianceSelector().solve(plain.data, 10, gen()).selected) == set(plain.truth["relevant"])  # why we rescale


def test_digits_splits_and_filters():
    prob = FeatureSelection(dataset="digits", trees=10)
    val, test = prob.instance("val", 0), prob.instance("test", 0)
    assert val.data.shape == (1078, 64) and np.array_equal(val.data.x, test.data.x)
    assert not np.array_equal(val.truth["x_eval"], test.truth["x_eval"])
    var = VarianceSelector().solve(val.data, 16, gen())
    assert np.all(val.data.x[:, var.selected].var(0) >= np.sort(val.data.x.var(0))[-16] - 1e-12)
    lap = LaplacianScore().solve(val.data, 16, gen())
    assert prob.score(val, lap)["accuracy"].value > 0.8  # 16 of 64 pixels still classify digits


def test_bad_input_is_named():
    with pytest.raises(PluginError, match="size = 0"):
        VarianceSelector().solve(FeatureData(np.zeros((5, 3))), 0, gen())
    with pytest.raises(PluginError, match="informative = 4 is too few"):
        FeatureSelection(dataset="madelon", informative=4)
    with pytest.raises(PluginError, match="distinct feature indices"):
        prob = FeatureSelection(**MADELON)
        prob.score(prob.instance("val", 0), FeatureRanking(np.array([1, 1]), np.zeros(60)))
