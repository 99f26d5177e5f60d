"""AltMin for matrix completion: exact (Jain, Netrapalli and Sanghavi 2013) and the robust,
sketch-preconditioned variant of Gu, Song, Yin and Zhang (ICLR 2024, arXiv 2302.11068).

Both start from the top-k SVD of P_Omega(M) / p (p estimated as |Omega| / (m n)), then alternate:
V <- argmin_V ||P_Omega(U V^T - M)||_F (one least-squares problem per column), then U likewise
per row. The factor held fixed is orthonormalised (thin QR) first, which changes nothing in
U V^T but keeps every regression well conditioned. A round is one V and one U update.
- `altmin` solves each regression exactly (Cholesky of the k x k Gram): O(|Omega| k^2) per round.
- `altmin-fast` solves each approximately with a sketch-preconditioned conjugate gradient
  (plugins/solvers/_least_squares.py): O(|Omega| k) per round plus O((m + n) s k^2) for the
  preconditioners, the paper's claim. The sparse embeddings are drawn once per solve. With
  `precondition = false` it is plain CG from zero (an ablation).

Choices: JNS13's clipping of the initial U (rows above 2 mu sqrt(k / m) zeroed) needs mu, which
a solver does not know; it is left out (the generated matrices are incoherent unless
`coherence` > 0). Rounds are fixed (`rounds`), with an optional early stop when the relative
residual on Omega falls below `tol`, so time per round compares like for like.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lowdim_bench.hparams import Param

from . import _least_squares as ls
from ._contract import Solver, Stopwatch, Trace, measurement, no_trace
from ._lowrank_ops import SparseEntries, top_svd
from .completion import LowRank, MatrixCompletion, Observed


def _check(data: Any, name: str) -> Observed:
    if not isinstance(data, Observed):
        from lowdim_bench.api import PluginError
        raise PluginError(f"solver {name!r}: expects matrix-completion data (Observed), got {type(data).__name__}")
    return data


def spectral_init(data: Observed, k: int, generator: torch.Generator, iters: int) -> LowRank:
    """Top-k SVD of P_Omega(M) / p_hat as (U S, V): the start of AltMin and the SVD baseline."""
    m, n = data.shape
    p_hat = data.count / (m * n)
    entries = SparseEntries(data.rows, data.cols, data.shape)
    a, a_t = entries.matrix(data.values / p_hat), entries.matrix_t(data.values / p_hat)
    u, s, v = top_svd(lambda x: a @ x, lambda y: a_t @ y, data.shape, k, generator, iters=iters)
    return LowRank(u * s, v)


class _AltMinBase(Solver):
    problem = "matrix-completion"
    knob = MatrixCompletion.size
    common = {
        "rounds": Param(30, int, low=1, high=10_000, help="alternating rounds (one V and one U update each)"),
        "init_iters": Param(8, int, low=0, high=200, help="power iterations of the randomized top-k SVD at init"),
        "tol": Param(0.0, float, low=0.0, help="stop once the relative residual on Omega is below this (0: never)"),
    }

    def side(self, fixed: torch.Tensor, side: ls.Side, plan: Any) -> torch.Tensor:
        """One half-step: the rows of the other factor, with `fixed` (orthonormal) held."""
        raise NotImplementedError

    def plan(self, side: ls.Side, k: int, generator: torch.Generator) -> Any:
        """Per-solve set-up for one side (the fast solver's sketches); None by default."""
        return None

    def half_flops(self, side: ls.Side, k: int) -> dict[str, int]:
        raise NotImplementedError

    def solve(self, data: Any, size: int, generator: torch.Generator, trace: Trace = no_trace) -> LowRank:
        data = _check(data, self.name)
        m, n = data.shape
        k = self.check_size(size, 1, min(m, n))
        h = self.hparams
        watch = Stopwatch()
        with watch:
            by_col, by_row = sides(data)
            plan_col, plan_row = self.plan(by_col, k, generator), self.plan(by_row, k, generator)
            start = spectral_init(data, k, generator, h["init_iters"])
            u = start.left
        trace(0, seconds=watch.total, round_seconds=watch.last, estimate=start)
        norm_y = float(torch.linalg.vector_norm(data.values)) or 1.0
        estimate = start
        rounds = 0
        for t in range(1, h["rounds"] + 1):
            with watch:
                uq = torch.linalg.qr(u).Q
                vq = torch.linalg.qr(self.side(uq, by_col, plan_col)).Q
                u = self.side(vq, by_row, plan_row)
            estimate = LowRank(u, vq)
            rounds = t
            residual = float(torch.linalg.vector_norm(estimate.entries(data.rows, data.cols) - data.values)) / norm_y
            trace(t, seconds=watch.total, round_seconds=watch.last, train_rel_residual=residual, estimate=estimate)
            if residual < h["tol"]:
                break
        estimate.extras = [measurement("rounds", rounds, "", None),
                           measurement("solve_seconds", watch.total, "s", False)]
        return estimate

    def iterations(self) -> int:
        return self.hparams["rounds"]

    def flops(self, data: Any, size: int) -> dict[str, float]:
        """Per round: both half-steps (see _least_squares: omega, rows, factor) and two thin QRs
        with Q formed (about 4 d k^2 each)."""
        data = _check(data, self.name)
        m, n = data.shape
        k = self.check_size(size, 1, min(m, n))
        halves = [self.half_flops(side, k) for side in sides(data)]
        omega = sum(h["omega"] for h in halves)
        per_round = sum(sum(h.values()) for h in halves) + 4 * (m + n) * k * k
        return {"round": float(per_round), "round_omega": float(omega), "total": float(per_round * self.hparams["rounds"])}


def sides(data: Observed) -> tuple[ls.Side, ls.Side]:
    """(by column: solves V, by row: solves U)."""
    m, n = data.shape
    return ls.make_side(data.cols, data.rows, data.values, n, m), ls.make_side(data.rows, data.cols, data.values, m, n)


class AltMin(_AltMinBase):
    name = "altmin"
    description = "alternating minimisation with exact least squares per row and column (JNS13)"
    source = "Jain, Netrapalli, Sanghavi 2013, Low-rank matrix completion using alternating minimization"
    params = dict(_AltMinBase.common)

    def side(self, fixed, side, plan):
        return ls.exact_side(fixed, side)

    def half_flops(self, side, k):
        return ls.flops_exact(side, k)


class AltMinFast(_AltMinBase):
    name = "altmin-fast"
    description = "robust AltMin: each regression solved by sketch-preconditioned CG, O(|Omega| k) per round"
    source = "Gu, Song, Yin, Zhang 2023 (ICLR 2024), Low rank matrix completion via robust alternating minimization in nearly linear time"
    params = {
        **_AltMinBase.common,
        "sketch_factor": Param(4.0, float, low=1.0, high=1000.0, help="sketch rows s = ceil(sketch_factor * k)"),
        "sketch_nnz": Param(1, int, low=1, high=16, help="non-zeros per column of the sparse embedding (1: CountSketch)"),
        "cg_steps": Param(2, int, low=0, high=1000, help="preconditioned CG steps after the sketch-and-solve start"),
        "precondition": Param(True, bool, help="false: plain CG on the normal equations from zero (ablation)"),
    }

    def sketch_rows(self, k: int) -> int:
        return max(1, math.ceil(self.hparams["sketch_factor"] * k))

    def plan(self, side, k, generator):
        if not self.hparams["precondition"]:
            return None
        return ls.draw_sketch(side, self.sketch_rows(k), self.hparams["sketch_nnz"], generator)

    def side(self, fixed, side, plan):
        return ls.sketched_side(fixed, side, self.hparams["cg_steps"], plan)

    def half_flops(self, side, k):
        h = self.hparams
        return ls.flops_sketched(side, k, self.sketch_rows(k), h["sketch_nnz"], h["cg_steps"], h["precondition"])
