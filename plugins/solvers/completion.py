"""Low-rank matrix completion: a seeded generator of incoherent rank-k matrices, sampled entries.

M* = U diag(sigma) V^T (m x n, rank k) with orthonormal U, V; each entry is observed
independently with probability `p` (Bernoulli sampling, as in Jain, Netrapalli and Sanghavi
2013 and Gu, Song, Yin and Zhang 2023), plus Gaussian noise of `noise` times the RMS entry.
Solvers see only the observed entries; the score is the relative Frobenius error to the clean
M*, ||X - M*||_F / ||M*||_F, computed from the factors (never forming an m x n matrix).

Options map to the papers' assumptions:
- `coherence` (alpha >= 0): rows of the Gaussian factors are scaled by (i+1)^-alpha before
  orthonormalising, so alpha = 0 is the incoherent case and larger alpha concentrates the
  row norms of U and V (the measured mu(U), mu(V) go into the instance's info).
- `condition`: sigma_1 / sigma_k, singular values geometric in between; M* is scaled to RMS 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lowdim_bench.api import Knob, Measurement, PluginError, Quality
from lowdim_bench.hparams import Param

from ._contract import Instance, Problem, Solution, check_split, measurement, split_seed


@dataclass
class Observed:
    """The entries a completion solver sees: (rows[t], cols[t]) -> values[t], sorted by row."""

    shape: tuple[int, int]
    rows: torch.Tensor  # int64 (N,)
    cols: torch.Tensor  # int64 (N,)
    values: torch.Tensor  # float64 (N,)

    @property
    def count(self) -> int:
        return int(self.values.numel())


@dataclass
class LowRank(Solution):
    """X = left @ right.T, the form every completion solver returns (m x r and n x r)."""

    left: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return (self.left[rows] * self.right[cols]).sum(1)


def frobenius_distance(a: LowRank, b: LowRank) -> float:
    """||A_l A_r^T - B_l B_r^T||_F without forming either matrix: the difference is
    [A_l, -B_l] [A_r, B_r]^T; with thin QRs P = Q_P R_P and Q = Q_Q R_Q its norm is
    ||R_P R_Q^T||_F, backward stable, so errors near 1e-12 are still resolved."""
    p = torch.cat([a.left, -b.left], dim=1)
    q = torch.cat([a.right, b.right], dim=1)
    rp = torch.linalg.qr(p, mode="r").R
    rq = torch.linalg.qr(q, mode="r").R
    return float(torch.linalg.matrix_norm(rp @ rq.T))


def frobenius_norm(a: LowRank) -> float:
    rl = torch.linalg.qr(a.left, mode="r").R
    rr = torch.linalg.qr(a.right, mode="r").R
    return float(torch.linalg.matrix_norm(rl @ rr.T))


def incoherence(basis: torch.Tensor) -> float:
    """mu(U) = (m / k) max_i ||e_i^T U||^2 for an orthonormal m x k basis (1 <= mu <= m / k)."""
    m, k = basis.shape
    return float(m / k * (basis**2).sum(1).max())


def _orthonormal(rng: np.random.Generator, m: int, k: int, alpha: float) -> np.ndarray:
    g = rng.standard_normal((m, k))
    if alpha > 0:
        g *= (np.arange(1, m + 1, dtype=float) ** -alpha)[rng.permutation(m), None]
    q, _ = np.linalg.qr(g)
    return q


def bernoulli_entries(rng: np.random.Generator, m: int, n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Each entry kept independently with probability p; row-major order. Drawn a block of rows
    at a time so a large m x n mask never exists at once."""
    rows, cols = [], []
    block = max(1, 2**22 // n)
    for start in range(0, m, block):
        hit = rng.random((min(block, m - start), n)) < p
        r, c = np.nonzero(hit)
        rows.append(r + start)
        cols.append(c)
    return np.concatenate(rows), np.concatenate(cols)


class MatrixCompletion(Problem):
    name = "matrix-completion"
    quality = Quality("rel_error", "", higher_is_better=False)
    size = Knob("rank", low=1, high=None, help="rank of the returned factors")
    description = "complete a rank-k matrix from Bernoulli(p) samples; error ||X - M*||_F / ||M*||_F"
    params = {
        "m": Param(600, int, low=2, high=100_000, help="rows"),
        "n": Param(600, int, low=2, high=100_000, help="columns"),
        "rank": Param(5, int, low=1, help="true rank k of M*"),
        "p": Param(0.08, float, low=1e-6, high=1.0, help="probability that an entry is observed"),
        "coherence": Param(0.0, float, low=0.0, high=4.0, help="row-norm decay alpha of the factors (0: incoherent)"),
        "condition": Param(1.0, float, low=1.0, high=1e8, help="sigma_1 / sigma_k of M*"),
        "noise": Param(0.0, float, low=0.0, help="noise std per observed entry, in units of M*'s RMS entry"),
    }

    def check_options(self) -> None:
        o = self.options
        if o["rank"] > min(o["m"], o["n"]):
            raise PluginError(f"problem {self.name!r}: rank = {o['rank']} exceeds min(m, n) = {min(o['m'], o['n'])}")
        if o["m"] * o["n"] * o["p"] > 5e7:
            raise PluginError(f"problem {self.name!r}: m * n * p = {o['m'] * o['n'] * o['p']:.3g} observed entries "
                              "is over the 5e7 this generator holds in memory")

    def instance(self, split: str, seed: int) -> Instance:
        check_split(self.name, split)
        o = self.options
        rng = np.random.default_rng(split_seed(self.name, split, seed, o))
        m, n, k = o["m"], o["n"], o["rank"]
        u = _orthonormal(rng, m, k, o["coherence"])
        v = _orthonormal(rng, n, k, o["coherence"])
        sigma = np.geomspace(1.0, 1.0 / o["condition"], k)
        sigma *= math.sqrt(m * n) / np.linalg.norm(sigma)  # RMS entry 1
        rows, cols = bernoulli_entries(rng, m, n, o["p"])
        truth = LowRank(torch.from_numpy(u * sigma), torch.from_numpy(v))
        r_t, c_t = torch.from_numpy(rows), torch.from_numpy(cols)
        values = truth.entries(r_t, c_t)
        if o["noise"] > 0:
            values = values + o["noise"] * torch.from_numpy(rng.standard_normal(values.shape[0]))
        data = Observed((m, n), r_t, c_t, values)
        info = {"observed": float(data.count), "mu_u": incoherence(torch.from_numpy(u)),
                "mu_v": incoherence(torch.from_numpy(v)), "fro_norm": float(math.sqrt(m * n))}
        return Instance(self.name, split, seed, data, truth, info)

    def size_range(self, instance: Instance) -> tuple[int, int]:
        m, n = instance.data.shape
        return 1, min(m, n)

    def progress(self, instance: Instance, estimate: Any) -> dict[str, float]:
        return {"rel_error": frobenius_distance(estimate, instance.truth) / instance.info["fro_norm"]}

    def score(self, instance: Instance, solution: Any) -> dict[str, Measurement]:
        if not isinstance(solution, LowRank):
            raise PluginError(f"problem {self.name!r}: a solution must be a LowRank, got {type(solution).__name__}")
        if solution.left.shape[0] != instance.data.shape[0] or solution.right.shape[0] != instance.data.shape[1]:
            raise PluginError(f"problem {self.name!r}: factors of shape {tuple(solution.left.shape)} and "
                              f"{tuple(solution.right.shape)} do not fit a {instance.data.shape} matrix")
        data = instance.data
        rel = self.progress(instance, solution)["rel_error"]
        fit = solution.entries(data.rows, data.cols) - data.values
        train = float(torch.linalg.vector_norm(fit) / max(float(torch.linalg.vector_norm(data.values)), 1e-300))
        out = [measurement("rel_error", rel, "", False), measurement("train_rel_residual", train, "", False),
               measurement("solution_rank", solution.rank, "", None)]
        return {x.metric: x for x in out}
