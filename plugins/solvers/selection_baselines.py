"""Cheap unsupervised feature-selection baselines: variance and the Laplacian score.

- `variance`: the variance of each raw feature (before standardising; after it every feature
  has variance 1). The classic first filter.
- `laplacian-score` (He, Cai and Niyogi, NIPS 2005): on the standardised data, a k-nearest-
  neighbour graph (symmetrised) with heat-kernel weights S_ij = exp(-||x_i - x_j||^2 / t),
  t = the mean squared edge length; D = diag(S 1), L = D - S. For feature f, with
  f~ = f - (f^T D 1 / 1^T D 1) 1, the score is f~^T L f~ / f~^T D f~; smaller keeps local
  structure better, so importance = -score. Constant features score +inf (never chosen first).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lowdim_bench.api import PluginError
from lowdim_bench.hparams import Param

from ._contract import Solver, Stopwatch, Trace, measurement, no_trace
from .quickselection import standardise
from .selection import FeatureData, FeatureRanking, FeatureSelection, top_k


def laplacian_scores(x: np.ndarray, neighbours: int) -> np.ndarray:
    """He et al.'s Laplacian score of every column of x (smaller is better)."""
    from sklearn.neighbors import kneighbors_graph  # here: 2 s of imports at plugin load otherwise

    dist = kneighbors_graph(x, n_neighbors=neighbours, mode="distance", include_self=False)
    dist = dist.maximum(dist.T).tocsr()
    t = float(np.mean(dist.data**2)) or 1.0
    s = dist.copy()
    s.data = np.exp(-(dist.data**2) / t)
    deg = np.asarray(s.sum(1)).ravel()
    f = x - (deg @ x) / deg.sum()
    den = (f * (deg[:, None] * f)).sum(0)
    num = den - (f * (s @ f)).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 1e-12 * max(den.max(), 1e-300), num / den, np.inf)


class _FilterSelector(Solver):
    problem = "feature-selection"
    knob = FeatureSelection.size

    def importance(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def solve(self, data: Any, size: int, generator: torch.Generator, trace: Trace = no_trace) -> FeatureRanking:
        if not isinstance(data, FeatureData):
            raise PluginError(f"solver {self.name!r}: expects feature-selection data, got {type(data).__name__}")
        k = self.check_size(size, 1, data.shape[1])
        watch = Stopwatch()
        with watch:
            imp = self.importance(data.x)
            chosen = top_k(imp, k)
        trace(1, seconds=watch.total)
        out = FeatureRanking(chosen, imp)
        out.extras = [measurement("solve_seconds", watch.total, "s", False)]
        return out


class VarianceSelector(_FilterSelector):
    name = "variance"
    description = "features with the largest raw variance"
    source = "baseline"

    def importance(self, x):
        return x.var(0)


class LaplacianScore(_FilterSelector):
    name = "laplacian-score"
    description = "features that best keep the k-NN graph's local structure (He, Cai, Niyogi 2005)"
    source = "He, Cai, Niyogi 2005, Laplacian score for feature selection"
    params = {"neighbours": Param(5, int, low=1, high=1000, help="k of the nearest-neighbour graph")}
    tune = {"neighbours": [5, 10]}

    def importance(self, x):
        return -laplacian_scores(standardise(x).double().numpy(), self.hparams["neighbours"])
