"""l_p regression sampling: scores against their definitions, unbiasedness, the problem's scorer."""
from __future__ import annotations

import numpy as np
import pytest

from lowdim_bench.api import PluginError
from lowdim_bench_builtin.solvers import _lp
from lowdim_bench_builtin.solvers.lp_sampling import Leverage, Lewis, LpSensitivity, RootLeverage, Uniform, sample_rows
from lowdim_bench_builtin.solvers.regression import LpRegression, SampledRegression, design_matrix
from solver_helpers import gen, one_thread  # noqa: F401  (one_thread: autouse fixture)


def heavy(n: int = 400, d: int = 5, seed: int = 0) -> np.ndarray:
    return design_matrix(np.random.default_rng(seed), n, d, "multivariate-t", 1.0)


@pytest.mark.parametrize("p", [1, 2])
def test_lewis_weights_sum_to_d_and_are_the_fixed_point(p):
    a = heavy()
    w, iters = _lp.lewis_weights(a, p)
    assert abs(w.sum() - 5) < 1e-8
    m = a.T @ (a * (w ** (1 - 2 / p))[:, None])
    again = np.einsum("ij,ji->i", a, np.linalg.solve(m, a.T)) ** (p / 2)
    assert np.allclose(again, w, rtol=1e-8)
    if p == 2:
        assert np.allclose(w, _lp.leverage(a), rtol=1e-10) and iters <= 3


def test_l1_lewis_weights_are_not_leverage_scores_on_heavy_rows():
    a = heavy()
    w, _ = _lp.lewis_weights(a, 1)
    tau = _lp.leverage(a)
    top = np.argmax(tau)
    assert w[top] < tau[top]  # the l_1 weights spread mass away from the heaviest rows
    assert abs(tau.sum() - 5) < 1e-8


def test_l1_sensitivities_match_the_exact_lp_from_below():
    a = heavy(300, 5, seed=1)
    lw, _ = _lp.lewis_weights(a, 1)
    s = _lp.l1_sensitivities(a, iters=10, start=lw)
    rows = [0, 7, 42, 150, 299, int(np.argmax(s))]
    exact = np.array([_lp.l1_sensitivity_lp(a, i) for i in rows])
    assert np.all(s[rows] <= exact * (1 + 1e-8))  # IRLS iterates are feasible: lower bounds
    assert np.all(s[rows] >= exact * 0.99)  # and within 1% after 10 iterations
    assert s.sum() <= 5 + 1e-8  # total l_1 sensitivity is at most d


def test_bernoulli_probabilities_hit_the_budget_and_cap_at_one():
    q = np.array([100.0, 1, 1, 1, 1, 1, 1, 1, 0])
    pi = _lp.bernoulli_probabilities(q, 4)
    assert abs(pi.sum() - 4) < 1e-12 and pi[0] == 1.0 and pi[-1] == 0.0
    assert np.allclose(pi[1:8], 3 / 7)


@pytest.mark.parametrize("p", [1, 2])
def test_the_sampled_regression_objective_is_unbiased_on_a_fixed_design(p):
    """For a fixed design and any fixed x, E[sum_kept w_i |a_i x - b_i|^p] = ||A x - b||_p^p: the
    mean over 4000 draws is within 4 standard errors (and 5%), for every sampler's scores.
    The draws are vectorised; `sample_rows` is checked to draw exactly that way (weights 1/pi)."""
    rng = np.random.default_rng(3)
    a = heavy(300, 4, seed=3)
    b = a @ rng.standard_normal(4) + rng.standard_t(2.0, 300)
    x = rng.standard_normal(4)
    r = np.abs(a @ x - b) ** p
    truth = r.sum()
    for q in (np.ones(300), _lp.leverage(a), np.sqrt(_lp.leverage(a)), _lp.lewis_weights(a, p)[0]):
        pi = _lp.bernoulli_probabilities(q, 40)
        kept, w = sample_rows(q, 40, np.random.default_rng(9))
        assert np.allclose(w, 1 / pi[kept]) and np.all(pi[kept] > 0)
        draws = ((rng.random((4000, 300)) < pi) * np.where(pi > 0, r / np.maximum(pi, 1e-300), 0.0)).sum(1)
        se = draws.std() / np.sqrt(len(draws))
        assert abs(draws.mean() - truth) < 4 * se + 1e-9 * truth
        assert abs(draws.mean() / truth - 1) < 0.05


def test_sampled_normal_equations_are_unbiased():
    """p = 2: E[A^T S^T S A] = A^T A, entry by entry, for leverage sampling of 30 rows of 200."""
    rng = np.random.default_rng(4)
    a = heavy(200, 3, seed=4)
    pi = _lp.bernoulli_probabilities(_lp.leverage(a), 30)
    keep = (rng.random((4000, 200)) < pi) / pi  # w_i on kept rows, 0 elsewhere
    grams = np.einsum("ti,ij,ik->tjk", keep, a, a)
    se = grams.std(0) / np.sqrt(len(grams))
    assert np.all(np.abs(grams.mean(0) - a.T @ a) < 4 * se + 1e-9)


def test_weighted_l1_solver_is_robust_to_outliers_and_agrees_with_l2_on_exact_data():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((80, 3))
    x = np.array([1.0, -2.0, 0.5])
    b = a @ x
    b_bad = b.copy()
    b_bad[:5] += 100.0
    assert np.allclose(_lp.solve_weighted(a, b_bad, np.ones(80), 1), x, atol=1e-7)  # l_1 ignores 5 outliers
    assert not np.allclose(_lp.solve_weighted(a, b_bad, np.ones(80), 2), x, atol=1e-2)
    assert np.allclose(_lp.solve_weighted(a, b, rng.random(80) + 0.5, 2), x)


@pytest.mark.parametrize("p", [1, 2])
def test_keeping_every_row_scores_zero_error_and_zero_distortion(p):
    prob = LpRegression(rows=300, d=4, p=p, directions=32)
    inst = prob.instance("val", 0)
    everything = SampledRegression(np.arange(300), np.ones(300), inst.truth["x_opt"])
    s = prob.score(inst, everything)
    assert s["rel_error"].value < 1e-7 and s["distortion"].value < 1e-9 and s["distortion_ab"].value < 1e-9
    sol = Uniform().solve(inst.data, 300, gen())  # size = rows: every pi is 1
    assert len(sol.indices) == 300 and prob.score(inst, sol)["rel_error"].value < 1e-7


def test_samplers_solve_with_their_own_scores_and_report_them():
    prob = LpRegression(rows=600, d=5, p=1, directions=32)
    inst = prob.instance("test", 1)
    for cls in (Uniform, Leverage, RootLeverage, Lewis, LpSensitivity):
        sol = cls().solve(inst.data, 80, gen(2))
        s = prob.score(inst, sol)
        assert 0 <= s["rel_error"].value < 5 and 0 <= s["distortion"].value
        assert 40 < len(sol.indices) < 130  # Bernoulli: about 80 expected
        extras = {m.metric: m.value for m in sol.extras}
        assert extras["score_seconds"] >= 0
    total = {m.metric: m.value for m in LpSensitivity().solve(inst.data, 80, gen()).extras}["score_total"]
    assert 1 < total <= 5 + 1e-8  # the l_1 total sensitivity is at most d


def test_same_generator_same_sample_and_bad_input_is_named():
    prob = LpRegression(rows=300, d=4, p=2, directions=8)
    inst = prob.instance("val", 2)
    a = Lewis().solve(inst.data, 50, gen(7))
    b = Lewis().solve(inst.data, 50, gen(7))
    assert np.array_equal(a.indices, b.indices)
    with pytest.raises(PluginError, match="size = 2"):
        Uniform().solve(inst.data, 2, gen())
    with pytest.raises(PluginError, match="p = 3"):
        LpRegression(p=3)
    with pytest.raises(PluginError, match="d = 50 must be below rows = 40"):
        LpRegression(rows=40, d=50)
