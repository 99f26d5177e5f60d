"""Row sampling for l_p regression: uniform, leverage, root-leverage, Lewis weights, l_p sensitivity.

Every sampler scores the rows (q_i >= 0), keeps row i independently with probability
pi_i = min(1, c q_i), c set so that sum pi_i equals the size (the expected number of rows), and
gives a kept row the weight 1 / pi_i, so for any fixed y, E[sum_kept w_i |y_i|^p] = ||y||_p^p
(Bernoulli sensitivity sampling, as analysed by Woodruff and Yasuda, "Sharper bounds for l_p
sensitivity sampling", ICML 2023). It then solves the weighted l_p regression on the kept rows.

Scores: uniform 1; leverage tau_i (exact, from a QR); root-leverage sqrt(tau_i) (the sampler that
paper shows needs about d rows for 1 <= p < 2); Lewis weights (Cohen and Peng's fixed point);
lp-sensitivity: for p = 2 the leverage scores, for p = 1 the sensitivities by the IRLS of
plugins/solvers/_lp.py started from the Lewis weights. Scores depend only on the instance, so
they are computed once per instance (memoised on it) and each solve reports the seconds they took.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from lowdim_bench.api import PluginError
from lowdim_bench.hparams import Param

from . import _lp
from ._contract import Solver, Stopwatch, Trace, measurement, no_trace, numpy_rng
from .regression import LpRegression, RegressionData, SampledRegression


def sample_rows(scores: np.ndarray, m: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Kept rows and their weights 1 / pi_i: row i kept with pi_i = min(1, c q_i), sum pi = m."""
    pi = _lp.bernoulli_probabilities(scores, m)
    kept = np.flatnonzero(rng.random(pi.shape[0]) < pi)
    return kept, 1.0 / pi[kept]


class _Sampler(Solver):
    problem = "lp-regression"
    knob = LpRegression.size
    params: dict[str, Param] = {}

    def scores(self, data: RegressionData) -> np.ndarray:
        raise NotImplementedError

    def _scores(self, data: RegressionData) -> tuple[np.ndarray, float]:
        key = (self.name, tuple(sorted(self.hparams.items())))
        if key not in data.memo:
            start = time.perf_counter()
            q = self.scores(data)
            data.memo[key] = (q, time.perf_counter() - start)
        return data.memo[key]

    def solve(self, data: Any, size: int, generator: torch.Generator, trace: Trace = no_trace) -> SampledRegression:
        if not isinstance(data, RegressionData):
            raise PluginError(f"solver {self.name!r}: expects lp-regression data, got {type(data).__name__}")
        n, d = data.shape
        m = self.check_size(size, d, n)
        rng = numpy_rng(generator)
        watch = Stopwatch()
        with watch:
            q, score_seconds = self._scores(data)
            kept, weights = sample_rows(q, m, rng)
            x = _lp.solve_weighted(data.a[kept], data.b[kept], weights, data.p) if kept.size >= d else np.zeros(d)
        trace(1, seconds=watch.total + score_seconds)
        out = SampledRegression(kept, weights, x)
        out.extras = [measurement("score_seconds", score_seconds, "s", False),
                      measurement("solve_seconds", watch.total + score_seconds, "s", False),
                      measurement("score_total", float(q.sum()), "", None)]
        return out


class Uniform(_Sampler):
    name = "uniform"
    description = "every row equally likely"
    source = "baseline"

    def scores(self, data):
        return np.ones(data.shape[0])


class Leverage(_Sampler):
    name = "leverage"
    description = "rows by their l_2 leverage scores"
    source = "Drineas, Mahoney, Muthukrishnan 2006"

    def scores(self, data):
        return _lp.leverage(data.a)


class RootLeverage(_Sampler):
    name = "root-leverage"
    description = "rows by the square roots of their leverage scores"
    source = "Woodruff, Yasuda 2023, Sharper bounds for l_p sensitivity sampling"

    def scores(self, data):
        return np.sqrt(_lp.leverage(data.a))


class Lewis(_Sampler):
    name = "lewis"
    description = "rows by their l_p Lewis weights (Cohen-Peng fixed point)"
    source = "Cohen, Peng 2015, l_p row sampling by Lewis weights"
    params = {"iters": Param(200, int, low=1, high=100_000, help="fixed-point iterations at most"),
              "tol": Param(1e-10, float, low=0.0, help="stop at this relative change of the weights")}

    def scores(self, data):
        return _lp.lewis_weights(data.a, data.p, self.hparams["iters"], self.hparams["tol"])[0]


class LpSensitivity(_Sampler):
    name = "lp-sensitivity"
    description = "rows by their l_p sensitivities (p = 2: leverage; p = 1: IRLS from the Lewis weights)"
    source = "Woodruff, Yasuda 2023, Sharper bounds for l_p sensitivity sampling"
    params = {"iters": Param(10, int, low=0, high=10_000, help="IRLS iterations per row (p = 1; 10: within 1%)")}

    def scores(self, data):
        if data.p == 2:
            return _lp.leverage(data.a)
        start, _ = _lp.lewis_weights(data.a, 1)
        return _lp.l1_sensitivities(data.a, self.hparams["iters"], start=start)
