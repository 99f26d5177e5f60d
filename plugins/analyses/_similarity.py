"""Representation similarity between two sets of features of the same inputs.

Each function takes X (n, p) and Y (n, q): row i of both is the same input seen by two networks
(or two layers). Everything is computed in float64 on the CPU: these are statistics of a few
thousand rows, and float32 Gram matrices lose the digits the reference values are pinned to.

- linear CKA (Kornblith et al. 2019): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred
  features; invariant to orthogonal transforms and isotropic scaling, not to any invertible map.
- debiased CKA: the same ratio with the unbiased HSIC estimator (Song et al. 2012), whose value
  does not drift upwards when p or q is large against n. Needs n >= 4.
- SVCCA (Raghu et al. 2017): keep the top singular directions of each (99% of the variance),
  then the mean canonical correlation between the two reduced sets.
- neuron matching (Li et al. 2016, "Convergent Learning"): the correlation of every unit of X
  with every unit of Y; one-to-one matching by maximum-weight bipartite matching (Hungarian,
  scipy's linear_sum_assignment), and the paper's semi-matching (each unit's best partner,
  one-to-many allowed) beside it.
- sparse prediction (the paper's one-to-many mapping): each unit of Y predicted from all of X by
  an L1-penalised linear regression (scikit-learn's Lasso); R^2 and connections per unit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["as_matrix", "linear_cka", "debiased_cka", "svcca", "svcca_basis", "mean_canonical_correlation",
           "unit_correlation", "match_neurons",
           "NeuronMatch", "sparse_prediction", "SparsePrediction"]


def as_matrix(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(n, p) float64 on the CPU; a 1-D input is one feature per row."""
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2:
        raise ValueError(f"features must be (samples, features), got shape {tuple(t.shape)}")
    return t


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_matrix(x), as_matrix(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must describe the same inputs: {x.shape[0]} vs {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise ValueError("similarity needs at least 2 samples")
    return x - x.mean(0), y - y.mean(0)


def _cross(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||Y^T X||_F^2 = tr(K L), by whichever side is smaller (features or samples)."""
    if x.shape[1] * y.shape[1] <= x.shape[0] ** 2:
        return torch.linalg.norm(y.T @ x) ** 2
    return ((x @ x.T) * (y @ y.T)).sum()


def linear_cka(x, y) -> float:
    """Linear CKA of centred features; 0 when either side has no variance (nothing to compare)."""
    x, y = _pair(x, y)
    den = torch.sqrt(_cross(x, x) * _cross(y, y))
    return float(_cross(x, y) / den) if den > 0 else 0.0


def _hsic_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Song et al.'s unbiased HSIC of the linear Grams K = X X^T, L = Y Y^T (diagonals zeroed),
    for centred X and Y without forming the n x n matrices: with k_i = ||x_i||^2, l_i = ||y_i||^2,
    tr(K~ L~) = ||Y^T X||^2 - k.l, 1^T K~ 1 = -sum k and K~ 1 = -k (the rows sum to zero)."""
    n = x.shape[0]
    k, l_ = (x * x).sum(1), (y * y).sum(1)
    trace = _cross(x, y) - k @ l_
    return (trace + k.sum() * l_.sum() / ((n - 1) * (n - 2)) - 2 * (k @ l_) / (n - 2)) / (n * (n - 3))


def debiased_cka(x, y) -> float:
    """CKA with unbiased HSIC; can be slightly negative for unrelated features. n >= 4."""
    x, y = _pair(x, y)
    if x.shape[0] < 4:
        raise ValueError("debiased CKA needs at least 4 samples")
    xy, xx, yy = _hsic_unbiased(x, y), _hsic_unbiased(x, x), _hsic_unbiased(y, y)
    return float(xy / torch.sqrt(xx * yy)) if xx > 0 and yy > 0 else 0.0


def _top_directions(x: torch.Tensor, keep: float, cap: int) -> torch.Tensor:
    """Orthonormal left singular vectors of x (centred) holding `keep` of its variance, at most `cap`."""
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    energy = s ** 2
    total = energy.sum()
    if total <= 0:
        return x[:, :0]
    k = int(torch.searchsorted(torch.cumsum(energy, 0) / total, torch.tensor(keep, dtype=torch.float64))) + 1
    k = max(1, min(k, cap, int((s > s[0] * 1e-10).sum())))
    return u[:, :k]


def svcca_basis(x, keep: float = 0.99, max_dims: int | None = None) -> torch.Tensor:
    """Orthonormal basis (n, k) of x's centred top directions holding `keep` of the variance.

    With k kept directions and n samples, k canonical correlations of unrelated data are
    already about sqrt(k/n) and reach 1 at k = n, so k is capped at n/10 (`max_dims`
    overrides) and the cap is part of what the number means."""
    x = as_matrix(x)
    x = x - x.mean(0)
    cap = max(1, x.shape[0] // 10) if max_dims is None else int(max_dims)
    return _top_directions(x, keep, cap)


def mean_canonical_correlation(qx: torch.Tensor, qy: torch.Tensor) -> float:
    """Mean canonical correlation of two orthonormal bases of the same rows."""
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return 0.0
    return float(torch.linalg.svdvals(qx.T @ qy).clamp(max=1.0).mean())


def svcca(x, y, keep: float = 0.99, max_dims: int | None = None) -> float:
    """SVCCA: mean canonical correlation after keeping `keep` of each side's variance."""
    x, y = _pair(x, y)
    return mean_canonical_correlation(svcca_basis(x, keep, max_dims), svcca_basis(y, keep, max_dims))


def unit_correlation(x, y) -> torch.Tensor:
    """(p, q) Pearson correlation of every unit of X with every unit of Y; 0 for a constant unit."""
    x, y = _pair(x, y)
    sx, sy = x.norm(dim=0), y.norm(dim=0)
    c = (x.T @ y) / (sx[:, None] * sy[None, :])
    c[(sx == 0)[:, None].expand_as(c) | (sy == 0)[None, :].expand_as(c)] = 0.0
    return c


@dataclass
class NeuronMatch:
    """One-to-one (bipartite) and semi-matching of units by correlation.

    perm[i] is the unit of Y matched to unit i of X (-1 when X has more units than Y);
    matched_corr[i] its correlation. semi_corr[i] is unit i's best correlation with any unit of Y.
    live[i]: unit i of X varies over the inputs; a constant (dead) unit correlates with nothing,
    so the means are over live units only."""

    perm: np.ndarray
    matched_corr: np.ndarray
    semi_corr: np.ndarray
    live: np.ndarray

    @property
    def mean_matched(self) -> float:
        hit = (self.perm >= 0) & self.live
        return float(self.matched_corr[hit].mean()) if hit.any() else 0.0

    @property
    def mean_semi(self) -> float:
        return float(self.semi_corr[self.live].mean()) if self.live.any() else 0.0


def match_neurons(x, y) -> NeuronMatch:
    """The paper's one-to-one matching maximises the summed correlation over unit pairs."""
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize costs 0.65 s at plugin load

    c = unit_correlation(x, y).numpy()
    rows, cols = linear_sum_assignment(c, maximize=True)
    perm = np.full(c.shape[0], -1, dtype=np.int64)
    perm[rows] = cols
    matched = np.zeros(c.shape[0])
    matched[rows] = c[rows, cols]
    live = (as_matrix(x).std(0) > 0).numpy()
    semi = c.max(axis=1) if c.shape[1] else np.zeros(c.shape[0])
    return NeuronMatch(perm=perm, matched_corr=matched, semi_corr=semi, live=live)


@dataclass
class SparsePrediction:
    """Y's units predicted from X by Lasso at `alpha` (standardised units): mean R^2 over Y's
    non-constant units and mean non-zero weights per predicted unit."""

    alpha: float
    r2: float
    connections: float


def sparse_prediction(x, y, alpha: float = 0.05) -> SparsePrediction:
    """The convergent-learning paper's one-to-many mapping, fitted and scored on the same rows
    (it measures how much of Y is a sparse linear function of X, not generalisation)."""
    from sklearn.linear_model import Lasso

    x, y = _pair(x, y)
    sx, sy = x.std(0), y.std(0)
    live_x, live_y = sx > 0, sy > 0
    if not live_x.any() or not live_y.any():
        return SparsePrediction(alpha, 0.0, 0.0)
    xs = (x[:, live_x] / sx[live_x]).numpy()
    ys = (y[:, live_y] / sy[live_y]).numpy()
    model = Lasso(alpha=alpha, fit_intercept=False, max_iter=5000, tol=1e-4).fit(xs, ys)
    resid = ys - model.predict(xs).reshape(ys.shape)
    r2 = 1.0 - (resid ** 2).sum(0) / (ys ** 2).sum(0)
    coef = np.atleast_2d(model.coef_)
    return SparsePrediction(alpha, float(r2.mean()), float((np.abs(coef) > 0).sum(1).mean()))
