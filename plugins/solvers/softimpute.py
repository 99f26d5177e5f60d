"""SoftImpute (Mazumder, Hastie and Tibshirani 2010) and the one-shot SVD-of-P_Omega baseline.

SoftImpute iterates Z <- SVT_lambda(P_Omega(M) + P_Omega_perp(Z)): fill the missing entries
with the current estimate, take the SVD, soft-threshold the singular values by lambda. As in the
paper (their "sparse plus low-rank" trick), the filled matrix is never formed: it equals
P_Omega(M - Z) + Z, a sparse matrix plus the rank-r estimate, and only its top-r singular
triplets are computed (randomized subspace iteration warm-started from the previous V), so an
iteration costs O(|Omega| r + (m + n) r^2). The size knob is that maximum rank r.

Choices: lambda = `lam_frac` * sigma_max(P_Omega(M)), 1/50 by default (our notes); with `grid`
> 1 the paper's warm-started path runs lambda geometrically from sigma_max down to that value,
the rounds split evenly over the grid. The stopping rule is the paper's: relative change
||Z_new - Z_old||_F^2 / ||Z_old||_F^2 below `tol`. `debias` refits the singular values by least
squares on Omega at the end (the paper's post-processing, "soft-impute+"), which removes the
lambda shrinkage; off by default so the plain method is what is measured.

`pomega-svd` is the classical baseline: the top-r SVD of P_Omega(M) / p_hat, no iterations.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lowdim_bench.hparams import Param

from ._contract import Solver, Stopwatch, Trace, measurement, no_trace
from ._lowrank_ops import SparseEntries, top_svd
from .altmin import _check, spectral_init
from .completion import LowRank, MatrixCompletion, frobenius_distance, frobenius_norm


def refit_singular_values(data, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """d minimising ||P_Omega(U diag(d) V^T - M)||_F: a least-squares problem with |Omega| rows
    and r columns, column l holding U[i, l] V[j, l] at each observed (i, j)."""
    design = u[data.rows] * v[data.cols]
    return torch.linalg.lstsq(design, data.values[:, None]).solution[:, 0]


class SoftImpute(Solver):
    name = "softimpute"
    problem = "matrix-completion"
    knob = MatrixCompletion.size
    description = "iterative singular-value soft-thresholding of the filled-in matrix (MHT 2010)"
    source = "Mazumder, Hastie, Tibshirani 2010, Spectral regularization algorithms for learning large incomplete matrices"
    params = {
        "rounds": Param(100, int, low=1, high=100_000, help="SVT iterations in all (over the whole lambda grid)"),
        "lam_frac": Param(0.02, float, low=0.0, high=1.0, help="lambda as a fraction of sigma_max(P_Omega(M))"),
        "grid": Param(1, int, low=1, high=1000, help="lambda values on the warm-started path (1: lambda only)"),
        "tol": Param(1e-9, float, low=0.0, help="stop a lambda once ||Z_new - Z_old||^2 / ||Z_old||^2 is below this"),
        "power_iters": Param(2, int, low=0, high=100, help="subspace iterations per SVT (warm-started)"),
        "oversample": Param(10, int, low=0, high=1000, help="extra columns in the randomized SVD"),
        "debias": Param(False, bool, help="refit the singular values on Omega at the end (soft-impute+)"),
    }
    tune = {"lam_frac": [0.005, 0.02, 0.05]}  # MHT10 choose lambda on held-out entries

    def iterations(self) -> int:
        return self.hparams["rounds"]

    def solve(self, data: Any, size: int, generator: torch.Generator, trace: Trace = no_trace) -> LowRank:
        data = _check(data, self.name)
        m, n = data.shape
        r = self.check_size(size, 1, min(m, n))
        h = self.hparams
        watch = Stopwatch()
        with watch:
            entries = SparseEntries(data.rows, data.cols, data.shape)
            a, a_t = entries.matrix(data.values), entries.matrix_t(data.values)
            _, s1, _ = top_svd(lambda x: a @ x, lambda y: a_t @ y, data.shape, 1, generator, iters=8)
            sigma_max = float(s1[0])
            lams = np.geomspace(sigma_max, max(h["lam_frac"] * sigma_max, 1e-300), h["grid"]) if h["grid"] > 1 \
                else np.array([h["lam_frac"] * sigma_max])
            u = torch.zeros(m, 0, dtype=data.values.dtype)
            v = torch.zeros(n, 0, dtype=data.values.dtype)
            d = torch.zeros(0, dtype=data.values.dtype)
        per_lam = max(1, h["rounds"] // len(lams))
        t = 0
        for li, lam in enumerate(lams):
            budget = per_lam if li < len(lams) - 1 else h["rounds"] - t
            for _ in range(budget):
                t += 1
                with watch:
                    old = LowRank(u * d, v)
                    res = data.values - (u[data.rows] * d * v[data.cols]).sum(1)
                    sp, sp_t = entries.matrix(res), entries.matrix_t(res)
                    uu, dd, vv = u, d, v
                    matmul = lambda x: sp @ x + uu @ (dd[:, None] * (vv.T @ x))
                    rmatmul = lambda y: sp_t @ y + vv @ (dd[:, None] * (uu.T @ y))
                    warm = v if v.shape[1] > 0 else None
                    u_new, s, v_new = top_svd(matmul, rmatmul, data.shape, r, generator, iters=h["power_iters"],
                                              oversample=h["oversample"], start=warm)
                    keep = s > lam
                    u, d, v = u_new[:, keep], (s - lam)[keep], v_new[:, keep]
                    new = LowRank(u * d, v)
                    before = frobenius_norm(old)
                    change = frobenius_distance(new, old) ** 2 / before**2 if before > 0 else float("inf")
                trace(t, seconds=watch.total, round_seconds=watch.last, lam=float(lam), rank=int(keep.sum()),
                      rel_change=change, estimate=new)
                if change < h["tol"]:
                    break
            if t >= h["rounds"]:
                break
        with watch:
            if h["debias"] and d.numel() > 0:
                d = refit_singular_values(data, u, v)
        out = LowRank(u * d, v)
        out.extras = [measurement("rounds", t, "", None), measurement("solve_seconds", watch.total, "s", False),
                      measurement("final_rank", int(d.numel()), "", None)]
        return out


class PomegaSvd(Solver):
    name = "pomega-svd"
    problem = "matrix-completion"
    knob = MatrixCompletion.size
    description = "top-r SVD of P_Omega(M) / p_hat (the classical one-shot estimate; AltMin's start)"
    source = "Keshavan, Montanari, Oh 2010 (spectral step); Jain, Netrapalli, Sanghavi 2013 (AltMin's init)"
    params = {"power_iters": Param(16, int, low=0, high=500, help="power iterations of the randomized SVD")}

    def solve(self, data: Any, size: int, generator: torch.Generator, trace: Trace = no_trace) -> LowRank:
        data = _check(data, self.name)
        m, n = data.shape
        r = self.check_size(size, 1, min(m, n))
        watch = Stopwatch()
        with watch:
            out = spectral_init(data, r, generator, self.hparams["power_iters"])
        trace(1, seconds=watch.total, round_seconds=watch.last, estimate=out)
        out.extras = [measurement("solve_seconds", watch.total, "s", False)]
        return out
