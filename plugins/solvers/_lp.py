"""l_p regression and the row scores that sampling for it uses (p in {1, 2}).

- `solve_weighted`: argmin_x sum_i w_i |a_i^T x - b_i|^p. p = 2 by least squares on
  sqrt(w)-scaled rows; p = 1 as a linear program (HiGHS via scipy.optimize.linprog) in the
  form A x + u - v = b, u, v >= 0, minimise w^T (u + v).
- `leverage`: tau_i = ||e_i^T Q||^2 for A = Q R (exact; sums to rank(A)).
- `lewis_weights`: l_p Lewis weights by the fixed point of Cohen and Peng (2015),
  w_i <- (a_i^T (A^T W^{1-2/p} A)^{-1} a_i)^{p/2}, a contraction for p < 4; they sum to d.
- `l1_sensitivities`: s_i = sup_x |a_i^T x| / ||A x||_1 = 1 / min{||A x||_1 : a_i^T x = 1}, the
  inner problem solved for all rows at once by IRLS with the constraint kept in closed form
  (x = M^{-1} a_i / (a_i^T M^{-1} a_i), M = A^T D A, D = 1/|A x|); every iterate is feasible, so
  the result is a lower bound on s_i that rises to it. `l1_sensitivity_lp` is the exact LP,
  one row at a time, for checks. For p = 2 the sensitivities are the leverage scores.
"""
from __future__ import annotations

import numpy as np

from lowdim_bench.api import PluginError


def lp_norm(r: np.ndarray, p: int) -> float:
    return float(np.sum(np.abs(r) ** p) ** (1.0 / p))


def solve_weighted(a: np.ndarray, b: np.ndarray, w: np.ndarray, p: int) -> np.ndarray:
    if p == 2:
        s = np.sqrt(w)[:, None]
        return np.linalg.lstsq(a * s, b * s[:, 0], rcond=None)[0]
    if p != 1:
        raise PluginError(f"l_p regression: p = {p!r} must be 1 or 2")
    import scipy.sparse as sp  # scipy here, not at plugin load (see registry.py's load time)
    from scipy.optimize import linprog

    n, d = a.shape
    eye = sp.identity(n, format="csr")
    a_eq = sp.hstack([sp.csr_matrix(a), eye, -eye], format="csr")
    cost = np.concatenate([np.zeros(d), w, w])
    bounds = [(None, None)] * d + [(0, None)] * (2 * n)
    res = linprog(cost, A_eq=a_eq, b_eq=b, bounds=bounds, method="highs")
    if res.status != 0:
        raise PluginError(f"l_1 regression: HiGHS failed ({res.message})")
    return res.x[:d]


def leverage(a: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(a)
    return np.sum(q * q, axis=1)


def lewis_weights(a: np.ndarray, p: int, iters: int = 200, tol: float = 1e-12) -> tuple[np.ndarray, int]:
    """(weights, iterations used). Starts from all ones; stops at relative change below tol."""
    if not 0 < p < 4:
        raise PluginError(f"Lewis weights: the fixed-point iteration needs 0 < p < 4, got p = {p!r}")
    w = np.ones(a.shape[0])
    for t in range(1, iters + 1):
        m = a.T @ (a * (w ** (1 - 2 / p))[:, None])
        tau = np.einsum("ij,ji->i", a, np.linalg.solve(m, a.T))
        new = np.maximum(tau, 0.0) ** (p / 2)
        done = np.max(np.abs(new - w) / np.maximum(w, 1e-300)) < tol
        w = new
        if done:
            return w, t
    return w, iters


def l1_sensitivities(a: np.ndarray, iters: int = 30, chunk: int = 256, start: np.ndarray | None = None
                     ) -> np.ndarray:
    """Lower bounds on the l_1 sensitivities that converge to them (IRLS; see the module docstring).
    `start`: row weights W for the first M = A^T W^{-1} A (l_1 Lewis weights are a good start)."""
    n, d = a.shape
    outer = (a[:, :, None] * a[:, None, :]).reshape(n, d * d)
    w0 = np.ones(n) if start is None else np.maximum(start, 1e-300)
    m0 = a.T @ (a / w0[:, None])
    out = np.empty(n)
    for lo in range(0, n, chunk):
        rows = a[lo:lo + chunk]  # the a_i whose sensitivity we want, (c, d)
        y = np.linalg.solve(m0, rows.T)  # (d, c)
        x = y / np.einsum("cd,dc->c", rows, y)[None, :]
        eye = np.eye(d)
        for _ in range(iters):
            r = np.abs(a @ x)  # (n, c)
            dinv = 1.0 / np.maximum(r, 1e-9 * r.mean(0, keepdims=True) + 1e-300)
            m = (dinv.T @ outer).reshape(-1, d, d)  # (c, d, d) = A^T D_i A
            # a tiny ridge keeps M solvable when some residuals vanish; x stays feasible
            # (normalised below), so the result is still a lower bound on s_i
            m += 1e-12 * np.trace(m, axis1=1, axis2=2)[:, None, None] / d * eye
            y = np.linalg.solve(m, rows[:, :, None])[..., 0]  # (c, d)
            x = (y / np.einsum("cd,cd->c", rows, y)[:, None]).T
        out[lo:lo + chunk] = 1.0 / np.abs(a @ x).sum(0)
    return out


def l1_sensitivity_lp(a: np.ndarray, i: int) -> float:
    """The exact l_1 sensitivity of row i: 1 / min{||A x||_1 : a_i^T x = 1}, by linear programming."""
    import scipy.sparse as sp
    from scipy.optimize import linprog

    n, d = a.shape
    eye = sp.identity(n, format="csr")
    a_eq = sp.vstack([sp.hstack([sp.csr_matrix(a), -eye, eye]),
                      sp.hstack([sp.csr_matrix(a[i:i + 1]), sp.csr_matrix((1, 2 * n))])], format="csr")
    b_eq = np.concatenate([np.zeros(n), [1.0]])
    cost = np.concatenate([np.zeros(d), np.ones(2 * n)])
    res = linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=[(None, None)] * d + [(0, None)] * (2 * n), method="highs")
    if res.status != 0:
        raise PluginError(f"l_1 sensitivity of row {i}: HiGHS failed ({res.message})")
    return 1.0 / res.fun


def bernoulli_probabilities(scores: np.ndarray, m: float) -> np.ndarray:
    """pi_i = min(1, c q_i) with c chosen so that sum pi_i = m (expected sample size m), q the
    scores. Rows with pi_i = 1 are always kept (weight 1); the rest are sampled."""
    q = np.maximum(np.asarray(scores, dtype=float), 0.0)
    n = q.shape[0]
    if m >= np.count_nonzero(q):
        return (q > 0).astype(float) if m < n else np.ones(n)
    capped = np.zeros(n, dtype=bool)
    for _ in range(n):
        free = q[~capped].sum()
        c = (m - capped.sum()) / free
        new = capped | (c * q >= 1.0)
        if new.sum() == capped.sum():
            break
        capped = new
    return np.where(capped, 1.0, np.minimum(1.0, c * q))
