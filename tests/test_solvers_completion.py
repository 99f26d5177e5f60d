"""Matrix completion: the generator, the error formula, and each solver's recovery and cost."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lowdim_bench.api import PluginError
from solver_helpers import gen, one_thread  # noqa: F401  (one_thread: autouse fixture)
from lowdim_bench_builtin.solvers import TraceLog
from lowdim_bench_builtin.solvers import _least_squares as ls
from lowdim_bench_builtin.solvers.altmin import AltMin, AltMinFast
from lowdim_bench_builtin.solvers.completion import LowRank, MatrixCompletion, frobenius_distance
from lowdim_bench_builtin.solvers.softimpute import PomegaSvd, SoftImpute

SMALL = dict(m=150, n=120, rank=3, p=0.3)


def dense(x: LowRank) -> torch.Tensor:
    return x.left @ x.right.T


def test_instances_are_seeded_and_val_test_differ():
    prob = MatrixCompletion(**SMALL)
    a, b, c = prob.instance("val", 0), prob.instance("val", 0), prob.instance("test", 0)
    assert torch.equal(a.data.values, b.data.values) and torch.equal(a.data.rows, b.data.rows)
    assert a.data.count != c.data.count or not torch.equal(a.data.values, c.data.values)
    m = dense(a.truth)
    assert torch.linalg.matrix_rank(m) == 3
    assert math.isclose(float(torch.linalg.matrix_norm(m)), math.sqrt(150 * 120), rel_tol=1e-9)  # RMS entry 1
    assert torch.allclose(a.data.values, m[a.data.rows, a.data.cols])  # noiseless: observed = M*
    assert abs(a.data.count / (150 * 120) - 0.3) < 0.02
    assert torch.all(a.data.rows[1:] >= a.data.rows[:-1])  # sorted by row, as Observed promises


def test_coherence_raises_measured_mu_and_noise_is_added():
    flat = MatrixCompletion(**SMALL).instance("val", 1)
    spiky = MatrixCompletion(**SMALL, coherence=1.5).instance("val", 1)
    assert spiky.info["mu_u"] > 2 * flat.info["mu_u"]
    noisy = MatrixCompletion(**SMALL, noise=0.1).instance("val", 1)
    resid = noisy.data.values - noisy.truth.entries(noisy.data.rows, noisy.data.cols)
    assert 0.08 < float(resid.std()) < 0.12


def test_bad_options_name_the_value():
    with pytest.raises(PluginError, match="rank = 200 exceeds"):
        MatrixCompletion(m=100, n=150, rank=200)
    with pytest.raises(PluginError, match="p = 1.5"):
        MatrixCompletion(p=1.5)
    with pytest.raises(PluginError, match="split 'train'"):
        MatrixCompletion(**SMALL).instance("train", 0)


def test_frobenius_distance_matches_dense_and_resolves_tiny_errors():
    g = gen(3)
    a = LowRank(torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randn(30, 3, generator=g, dtype=torch.float64))
    b = LowRank(torch.randn(40, 2, generator=g, dtype=torch.float64), torch.randn(30, 2, generator=g, dtype=torch.float64))
    assert math.isclose(frobenius_distance(a, b), float(torch.linalg.matrix_norm(dense(a) - dense(b))), rel_tol=1e-10)
    near = LowRank(a.left * (1 + 1e-10), a.right)
    assert math.isclose(frobenius_distance(near, a), 1e-10 * float(torch.linalg.matrix_norm(dense(a))), rel_tol=1e-3)


@pytest.mark.parametrize("solver", [AltMin(rounds=40), AltMinFast(rounds=40)], ids=["altmin", "altmin-fast"])
def test_altmin_recovers_a_noiseless_matrix_to_1e6(solver):
    prob = MatrixCompletion(**SMALL)
    inst = prob.instance("test", 0)
    log = TraceLog(prob, inst)
    sol = solver.solve(inst.data, 3, gen(), log)
    score = prob.score(inst, sol)
    assert score["rel_error"].value < 1e-6
    assert score["rel_error"].higher_is_better is False
    errs, secs = log.column("rel_error"), log.column("seconds")
    assert len(errs) == 41 and errs[0] > 1e-2 > errs[-1]  # the spectral start is far, the end is exact
    assert all(b >= a for a, b in zip(secs, secs[1:]))  # cumulative solve time


def test_preconditioning_is_what_makes_two_cg_steps_enough():
    """The paper's point: a sketch preconditioner makes a few CG steps as good as exact solves;
    plain CG with one step (no preconditioner) stalls (our notes: 1.9e-5 vs 1.5e-1)."""
    prob = MatrixCompletion(m=300, n=300, rank=5, p=0.1)
    inst = prob.instance("val", 0)
    exact = prob.score(inst, AltMin(rounds=12).solve(inst.data, 5, gen()))["rel_error"].value
    fast = prob.score(inst, AltMinFast(rounds=12).solve(inst.data, 5, gen()))["rel_error"].value
    plain = prob.score(inst, AltMinFast(rounds=12, precondition=False, cg_steps=1).solve(inst.data, 5, gen()))["rel_error"].value
    assert fast < 10 * exact + 1e-9
    assert plain > 100 * fast


def _ls_batch(seed: int, rows: int, cols: int, k: int, ill: bool, per_row: int = 12):
    """A fixed factor (cols x k; columns scaled over three decades when `ill`) and random
    observed entries, about `per_row` per row, with pure-noise values."""
    g = gen(seed)
    fixed = torch.randn(cols, k, generator=g, dtype=torch.float64)
    if ill:
        fixed = fixed * torch.logspace(0, 3, k, dtype=torch.float64)
    idx = torch.randint(0, rows, (rows * per_row,), generator=g)
    oth = torch.randint(0, cols, (rows * per_row,), generator=g)
    key = torch.unique(idx * cols + oth)
    idx, oth = key // cols, key % cols
    vals = torch.randn(idx.numel(), generator=g, dtype=torch.float64)
    return fixed, ls.make_side(idx, oth, vals, rows, cols)


def test_sketched_solver_converges_to_the_exact_solution_even_when_ill_conditioned():
    """Responses pure noise (the hardest case for sketch-and-solve): with the sketch
    preconditioner (s = 4k) 8 CG steps, fewer than k = 10 so CG cannot be exact by counting,
    get within 1e-3; without it CG has hardly moved."""
    fixed, side = _ls_batch(0, 30, 2000, 10, ill=True, per_row=120)
    exact = ls.exact_side(fixed, side)
    sketch = ls.draw_sketch(side, 40, 1, gen(1))

    def rel(steps: int, sk) -> float:
        return float((ls.sketched_side(fixed, side, steps, sk) - exact).norm() / exact.norm())

    assert rel(30, sketch) < 1e-9
    assert rel(8, sketch) < 1e-3
    assert rel(8, None) > 0.5


def test_short_rows_are_factored_directly_and_solved_exactly():
    """Rows with at most s entries need no sketch: R from A_j itself makes x0 exact."""
    fixed, side = _ls_batch(1, 25, 300, 4, ill=True, per_row=10)
    assert int(side.counts.max()) <= 40
    out = ls.sketched_side(fixed, side, 0, ls.draw_sketch(side, 40, 2, gen(0)))
    assert torch.allclose(out, ls.exact_side(fixed, side), rtol=1e-8, atol=1e-10)


def test_exact_side_matches_lstsq_row_by_row():
    fixed, side = _ls_batch(5, 30, 100, 3, ill=False)
    out = ls.exact_side(fixed, side)
    for j in range(30):
        lo, hi = int(side.crow[j]), int(side.crow[j + 1])
        ref = torch.linalg.lstsq(fixed[side.col[lo:hi]], side.values[lo:hi, None]).solution[:, 0]
        assert torch.allclose(out[j], ref, atol=1e-9)


class _KernelFlops(TorchDispatchMode):
    """FLOPs of the products as issued: batched GEMMs, CSR x dense (2 nnz w), SDDMM (2 nnz k)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.bmm.default:
            (b, n, m), p = args[0].shape, args[1].shape[2]
            self.total += 2 * b * n * m * p
        elif func is torch.ops.aten.mm.default and args[0].layout == torch.sparse_csr:
            self.total += 2 * args[0]._nnz() * args[1].shape[1]
        elif func is torch.ops.aten.sparse_sampled_addmm.default:
            self.total += 2 * args[0]._nnz() * args[1].shape[1]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["exact", "sketched", "plain-cg"])
def test_declared_flops_equal_what_the_kernels_are_asked_to_do(kind):
    """The O(|Omega| k^2) vs O(|Omega| k) claim, checked on the products actually issued."""
    fixed, side = _ls_batch(2, 50, 300, 5, ill=False, per_row=30)
    sketch = ls.draw_sketch(side, 10, 1, gen(0))  # drawn outside: set-up, not a half-step
    with _KernelFlops() as count:
        if kind == "exact":
            ls.exact_side(fixed, side)
        else:
            ls.sketched_side(fixed, side, 3, sketch if kind == "sketched" else None)
    declared = ls.flops_exact(side, 5) if kind == "exact" else ls.flops_sketched(side, 5, 10, 1, 3, kind == "sketched")
    assert count.total == declared["omega"] + declared["rows"]


def test_declared_round_cost_grows_as_k_squared_for_exact_and_k_for_fast():
    """Per-round FLOPs at a fixed |Omega| (many entries per column): exact ~ |Omega| k^2, fast ~
    |Omega| k (the paper's O(|Omega| k) vs O(|Omega| k^2)); exponents from the declared formula."""
    inst = MatrixCompletion(m=400, n=400, rank=2, p=0.5).instance("val", 0)
    ks = [4, 8, 16]

    def slope(solver):
        f = [solver.flops(inst.data, k)["round_omega"] for k in ks]
        return np.polyfit(np.log(ks), np.log(f), 1)[0]

    assert 1.8 < slope(AltMin()) < 2.1
    assert 0.9 < slope(AltMinFast()) < 1.2


def test_pomega_svd_is_exact_at_full_observation_and_improves_with_p():
    full = MatrixCompletion(m=60, n=50, rank=4, p=1.0)
    inst = full.instance("val", 0)
    assert full.score(inst, PomegaSvd().solve(inst.data, 4, gen()))["rel_error"].value < 1e-10
    errs = []
    for p in (0.2, 0.6):
        prob = MatrixCompletion(m=200, n=200, rank=4, p=p)
        i = prob.instance("val", 0)
        errs.append(prob.score(i, PomegaSvd().solve(i.data, 4, gen()))["rel_error"].value)
    assert errs[1] < errs[0] < 1.0


def test_one_softimpute_step_is_the_svt_of_the_filled_matrix():
    prob = MatrixCompletion(m=50, n=40, rank=3, p=0.5)
    inst = prob.instance("val", 0)
    d = inst.data
    sol = SoftImpute(rounds=1, lam_frac=0.1, power_iters=30).solve(d, 40, gen())  # rank cap = min(m, n)
    filled = torch.zeros(d.shape, dtype=torch.float64)
    filled[d.rows, d.cols] = d.values  # Z = 0 at the start: the filled matrix is P_Omega(M)
    u, s, vh = torch.linalg.svd(filled, full_matrices=False)
    ref = (u * (s - 0.1 * s[0]).clamp_min(0)) @ vh
    assert torch.allclose(dense(sol), ref, atol=1e-8)
    assert sol.rank == int((s > 0.1 * s[0]).sum()) > 3


def test_softimpute_recovers_within_its_stated_tolerance_and_lambda_shrinks_rank():
    """Stated tolerance: soft-thresholding biases the estimate by about lambda, and SVT is a
    first-order method (linear rate about 1 - p): at lambda = sigma_max / 50 the error stays at a
    few percent; at lambda = 1e-6 sigma_max, 100 iterations and debiasing give below 1e-4."""
    prob = MatrixCompletion(**SMALL)
    inst = prob.instance("test", 0)
    plain = prob.score(inst, SoftImpute(rounds=100).solve(inst.data, 3, gen()))["rel_error"].value
    assert 1e-3 < plain < 0.1
    small = SoftImpute(rounds=100, lam_frac=1e-6, tol=0.0, debias=True).solve(inst.data, 3, gen())
    assert prob.score(inst, small)["rel_error"].value < 1e-4
    big = SoftImpute(rounds=20, lam_frac=0.5).solve(inst.data, 10, gen())
    wide = SoftImpute(rounds=20, lam_frac=0.01).solve(inst.data, 10, gen())
    assert big.rank < wide.rank


def test_solvers_refuse_bad_sizes_and_params():
    inst = MatrixCompletion(**SMALL).instance("val", 0)
    with pytest.raises(PluginError, match="size = 500"):
        AltMin().solve(inst.data, 500, gen())
    with pytest.raises(PluginError, match="lam_frac"):
        SoftImpute(lam_frac=2.0)
    with pytest.raises(PluginError, match="precondition"):
        AltMinFast(precondition="yes")
    with pytest.raises(PluginError, match="expects matrix-completion data"):
        AltMin().solve(np.zeros((3, 3)), 1, gen())
