"""Sparse observed-entry matrices and a randomized top-r SVD that only needs products with them.

Why randomized subspace iteration (Halko, Martinsson and Tropp 2011) rather than a dense SVD:
the matrices here are P_Omega(M) (sparse) or P_Omega(M - Z) + Z (sparse plus low rank, in
SoftImpute), so a product costs O(|Omega| r + (m + n) r^2) and the m x n matrix never exists.
Every random draw comes from the caller's generator; a warm start (the previous right factor)
replaces the random start, which is how SoftImpute reuses work between iterations.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._contract import csr_tensor

MatMul = Callable[[torch.Tensor], torch.Tensor]


class SparseEntries:
    """P_Omega(.) with a fixed pattern: `matrix(values)` and `matrix_t(values)` give the CSR
    matrix and its transpose for new values in the entries' own (row-sorted) order."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> None:
        self.rows, self.cols, self.shape = rows, cols, shape
        self._t_order = torch.argsort(cols, stable=True)
        self._crow = torch.zeros(shape[0] + 1, dtype=torch.int64)
        self._crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
        self._crow_t = torch.zeros(shape[1] + 1, dtype=torch.int64)
        self._crow_t[1:] = torch.cumsum(torch.bincount(cols, minlength=shape[1]), 0)
        self._col_t = rows[self._t_order]

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        return csr_tensor(self._crow, self.cols, values, self.shape)

    def matrix_t(self, values: torch.Tensor) -> torch.Tensor:
        return csr_tensor(self._crow_t, self._col_t, values[self._t_order], (self.shape[1], self.shape[0]))


def top_svd(matmul: MatMul, rmatmul: MatMul, shape: tuple[int, int], r: int, generator: torch.Generator,
            iters: int = 4, oversample: int = 10, start: torch.Tensor | None = None,
            dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-r singular triplets (U m x r, s (r,), V n x r) of the operator A given by
    matmul(X) = A X and rmatmul(Y) = A^T Y. `start` (n x l) warm-starts the subspace."""
    m, n = shape
    width = min(r + oversample, m, n)
    if start is None:
        omega = torch.randn(n, width, generator=generator, dtype=dtype)
    else:
        omega = start[:, :width]
        if omega.shape[1] < width:
            extra = torch.randn(n, width - omega.shape[1], generator=generator, dtype=dtype)
            omega = torch.cat([omega, extra], dim=1)
    q = torch.linalg.qr(matmul(omega)).Q
    for _ in range(iters):
        z = torch.linalg.qr(rmatmul(q)).Q
        q = torch.linalg.qr(matmul(z)).Q
    b_t = rmatmul(q)  # n x width = (Q^T A)^T
    v, s, ut = torch.linalg.svd(b_t, full_matrices=False)
    u = q @ ut.T
    return u[:, :r], s[:r], v[:, :r]
