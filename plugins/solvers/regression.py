"""Tall l_p regression (p in {1, 2}) with heavy-tailed designs: the problem row sampling solves.

A solver picks rows (a size = the expected number of rows) and weights, and fits x on them; the
score is the relative regression error ||A x - b||_p / OPT - 1 (OPT = min_x ||A x - b||_p on all
rows, computed here) and the subspace-embedding distortion of its weighted sample,
max over z of | ||S B z||_p / ||B z||_p - 1 | with ||S y||_p^p = sum_i w_i |y_i|^p, for B = A
(`distortion`, the classical subspace embedding) and B = [A b] (`distortion_ab`, the span a
regression guarantee needs). For p = 2 the maximum is exact (singular values of S B R^{-1}); for
p = 1 it is taken over fixed directions (the axes, `directions` Gaussian ones, x_opt, and for
[A b] also (x_opt, -1) and the solver's (x, -1)): a lower bound on the true distortion.

Designs (`design`): "multivariate-t" rows N(0, Sigma) / sqrt(chi2_df / df) with Sigma_ij =
2 * 0.5^|i-j| (the T_df designs of Ma, Mahoney and Yu 2015: rows of very unequal leverage), or
"iid-t" entries. Noise: Student-t with `noise_df` degrees of freedom, scaled by `noise`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lowdim_bench.api import Knob, Measurement, PluginError, Quality
from lowdim_bench.hparams import Param

from ._contract import Instance, Problem, Solution, check_split, measurement, split_seed
from ._lp import lp_norm, solve_weighted


@dataclass
class RegressionData:
    """What a sampler sees: the design, the response and p. `memo` holds a solver's
    per-instance preprocessing (row scores and the seconds they took), keyed by the solver."""

    a: np.ndarray
    b: np.ndarray
    p: int
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.a.shape


@dataclass
class SampledRegression(Solution):
    """The rows kept, their weights (||S y||_p^p = sum w_i |y_i|^p) and the fitted x."""

    indices: np.ndarray
    weights: np.ndarray
    x: np.ndarray


def design_matrix(rng: np.random.Generator, n: int, d: int, kind: str, df: float) -> np.ndarray:
    if kind == "iid-t":
        return rng.standard_t(df, size=(n, d))
    idx = np.arange(d)
    sigma = 2.0 * 0.5 ** np.abs(idx[:, None] - idx[None, :])
    g = rng.standard_normal((n, d)) @ np.linalg.cholesky(sigma).T
    return g / np.sqrt(rng.chisquare(df, size=n) / df)[:, None]


class LpRegression(Problem):
    name = "lp-regression"
    quality = Quality("rel_error", "", higher_is_better=False)
    size = Knob("samples", low=1, high=None, help="expected number of rows sampled")
    description = "tall l_p regression from sampled rows; relative error to OPT and embedding distortion"
    params = {
        "rows": Param(4096, int, low=2, high=1_000_000, help="rows n of the design"),
        "d": Param(10, int, low=1, high=1000, help="columns d"),
        "p": Param(1, Literal[1, 2], help="the l_p norm of the regression (1 or 2)"),
        "design": Param("multivariate-t", choices=("multivariate-t", "iid-t"), help="how the rows are drawn"),
        "df": Param(1.0, float, low=0.1, high=1e6, help="degrees of freedom of the design's t distribution"),
        "noise": Param(1.0, float, low=0.0, help="scale of the noise"),
        "noise_df": Param(2.0, float, low=0.1, high=1e6, help="degrees of freedom of the Student-t noise"),
        "directions": Param(256, int, low=0, high=100_000, help="random directions for the p = 1 distortion"),
    }

    def check_options(self) -> None:
        if self.options["d"] >= self.options["rows"]:
            raise PluginError(f"problem {self.name!r}: d = {self.options['d']} must be below rows = {self.options['rows']}")

    def instance(self, split: str, seed: int) -> Instance:
        check_split(self.name, split)
        o = self.options
        data_opts = {k: v for k, v in o.items() if k != "directions"}  # directions only change the scorer
        rng = np.random.default_rng(split_seed(self.name, split, seed, data_opts))
        n, d, p = o["rows"], o["d"], o["p"]
        a = design_matrix(rng, n, d, o["design"], o["df"])
        x_true = rng.standard_normal(d)
        b = a @ x_true + o["noise"] * rng.standard_t(o["noise_df"], size=n)
        x_opt = solve_weighted(a, b, np.ones(n), p)
        opt = lp_norm(a @ x_opt - b, p)
        ab = np.column_stack([a, b])
        gauss = rng.standard_normal((d + 1, o["directions"]))
        truth = {"x_opt": x_opt, "opt": opt, "ab": ab, "r_a": np.linalg.qr(a, mode="r"),
                 "r_ab": np.linalg.qr(ab, mode="r"),
                 "dirs_a": np.column_stack([np.eye(d), gauss[:d], x_opt]),
                 "dirs_ab": np.column_stack([np.eye(d + 1), gauss, np.append(x_opt, -1.0)])}
        return Instance(self.name, split, seed, RegressionData(a, b, p), truth,
                        {"opt": opt, "rows": float(n), "d": float(d)})

    def size_range(self, instance: Instance) -> tuple[int, int]:
        n, d = instance.data.shape
        return d, n

    def distortion(self, instance: Instance, solution: SampledRegression, with_b: bool) -> float:
        t, p = instance.truth, instance.data.p
        cols = t["ab"] if with_b else t["ab"][:, :-1]
        sb = cols[solution.indices] * (solution.weights ** (1.0 / p))[:, None]
        if p == 2:
            r = t["r_ab"] if with_b else t["r_a"]
            if sb.shape[0] < r.shape[0]:
                return 1.0  # fewer rows than dimensions: some direction maps to zero
            s = np.linalg.svd(np.linalg.solve(r.T, sb.T).T, compute_uv=False)
            return float(max(abs(s.max() - 1.0), abs(1.0 - s.min())))
        dirs = np.column_stack([t["dirs_ab"], np.append(solution.x, -1.0)]) if with_b else t["dirs_a"]
        full = np.abs(cols @ dirs).sum(0)
        sampled = np.abs(sb @ dirs).sum(0)
        ok = full > 0
        return float(np.max(np.abs(sampled[ok] / full[ok] - 1.0)))

    def score(self, instance: Instance, solution: Any) -> dict[str, Measurement]:
        if not isinstance(solution, SampledRegression):
            raise PluginError(f"problem {self.name!r}: a solution must be a SampledRegression, got {type(solution).__name__}")
        data, t = instance.data, instance.truth
        x = np.asarray(solution.x, dtype=float)
        if x.shape != (data.shape[1],):
            raise PluginError(f"problem {self.name!r}: x has shape {x.shape}, expected ({data.shape[1]},)")
        rel = lp_norm(data.a @ x - data.b, data.p) / t["opt"] - 1.0
        out = [measurement("rel_error", max(rel, 0.0), "", False),
               measurement("distortion", self.distortion(instance, solution, with_b=False), "", False),
               measurement("distortion_ab", self.distortion(instance, solution, with_b=True), "", False),
               measurement("rows_kept", len(solution.indices), "rows", None)]
        return {m.metric: m for m in out}
