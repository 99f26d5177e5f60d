"""A truly sparse linear layer and the SET rewiring step (Mocanu et al. 2018), as QuickSelection uses.

Storage: only the non-zeros, in CSR form: `crow` (n_out + 1) and `col` (nnz) int32 indices and
`values` (nnz); plus the transposed pattern (`t_crow`, `t_col`, `t_perm`), derived from it, for
the input gradient. Why a custom autograd function: torch's own backward of a sparse product
builds a dense n_out x n_in gradient and masks it (COO: a dense mm; CSR: a to_dense), which is
exactly the dense cost sparse training is meant to avoid. Here the forward is a CSR product, the
weight gradient a sampled dense-dense product (SDDMM: only at the pattern's positions) and the
input gradient a product with the transposed CSR, so time and memory scale with nnz (times the
batch), never with n_in * n_out; new positions are drawn by rejection, not a dense permutation.

Initialisation follows the SET code: an Erdos-Renyi pattern of epsilon (n_in + n_out) connections,
values N(0, 1) / 10. The reference draws that many positions with replacement (duplicates merge,
leaving slightly fewer); here exactly that many distinct positions are drawn.

`evolve` is SET's rewiring (the reference `weightsEvolution_II`): remove the fraction zeta of the
negative weights closest to zero and the fraction zeta of the positive weights closest to zero
(and exact zeros), then add as many connections at random empty positions with values
N(0, 1) / 10; surviving connections keep their momentum, new ones start at zero.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._contract import csr_tensor


def _csr(index_dtype: torch.dtype, rows: torch.Tensor, cols: torch.Tensor, n_rows: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    crow = torch.zeros(n_rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return crow.to(index_dtype), cols.to(index_dtype)


class _SparseProduct(torch.autograd.Function):
    """y = x W^T for W (n_out x n_in) in CSR; backward by SDDMM and the transposed CSR."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, x: torch.Tensor, layer: "SparseLinear") -> torch.Tensor:
        ctx.layer = layer
        ctx.save_for_backward(values, x)
        return torch.sparse.mm(layer.matrix(values), x.T).T

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        values, x = ctx.saved_tensors
        layer = ctx.layer
        pattern = layer.matrix(torch.zeros_like(values))
        grad_values = torch.sparse.sampled_addmm(pattern, grad.T.contiguous(), x, beta=0.0).values()
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.sparse.mm(layer.matrix_t(values), grad.T).T
        return grad_values, grad_x, None


def _distinct_positions(count: int, total: int, generator: torch.Generator, taken: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """`count` distinct linear positions in [0, total) not in `taken`, by rejection (no dense mask)."""
    taken = torch.empty(0, dtype=torch.int64) if taken is None else taken
    if count + taken.numel() > total:
        raise ValueError(f"cannot place {count} connections: only {total - taken.numel()} free positions")
    found = torch.empty(0, dtype=torch.int64)
    while found.numel() < count:
        need = count - found.numel()
        draw = torch.randint(0, total, (need + need // 4 + 8,), generator=generator)
        draw = torch.unique(draw[~torch.isin(draw, taken) & ~torch.isin(draw, found)])
        draw = draw[torch.randperm(draw.numel(), generator=generator)][:need]  # unique sorts: shuffle back
        found = torch.cat([found, draw])
    return found


class SparseLinear(nn.Module):
    """y = x W^T + b, W (n_out x n_in) held as its non-zeros only (see the module docstring)."""

    def __init__(self, n_in: int, n_out: int, epsilon: float, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        nnz = min(int(round(epsilon * (n_in + n_out))), n_in * n_out)
        self.index_dtype = torch.int32 if max(n_in, n_out, nnz) < 2**31 else torch.int64
        self.values = nn.Parameter(torch.randn(nnz, generator=generator, dtype=dtype) / 10)
        self.bias = nn.Parameter(torch.zeros(n_out, dtype=dtype))
        for name in ("crow", "col", "t_crow", "t_col", "t_perm"):
            self.register_buffer(name, torch.empty(0, dtype=self.index_dtype))
        self._set_pattern(torch.sort(_distinct_positions(nnz, n_in * n_out, generator)).values)

    def _set_pattern(self, positions: torch.Tensor) -> None:
        """Positions (sorted, linear row-major) -> the CSR of W and of W^T."""
        rows, cols = positions // self.n_in, positions % self.n_in
        self.crow, self.col = _csr(self.index_dtype, rows, cols, self.n_out)
        perm = torch.argsort(cols, stable=True)
        self.t_crow, self.t_col = _csr(self.index_dtype, cols[perm], rows[perm], self.n_in)
        self.t_perm = perm.to(self.index_dtype)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of the non-zeros, int64, in storage order."""
        counts = self.crow[1:].long() - self.crow[:-1].long()
        return torch.repeat_interleave(torch.arange(self.n_out), counts), self.col.long()

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        return csr_tensor(self.crow, self.col, values, (self.n_out, self.n_in))

    def matrix_t(self, values: torch.Tensor) -> torch.Tensor:
        return csr_tensor(self.t_crow, self.t_col, values[self.t_perm], (self.n_in, self.n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SparseProduct.apply(self.values, x, self) + self.bias

    def strength_in(self) -> torch.Tensor:
        """Sum of |w| over each input's connections: QuickSelection's feature importance."""
        return torch.zeros(self.n_in, dtype=self.values.dtype).index_add_(0, self.col.long(), self.values.detach().abs())

    @torch.no_grad()
    def evolve(self, zeta: float, generator: torch.Generator, momentum: torch.Tensor) -> torch.Tensor:
        """Rewire in place; returns the momentum buffer re-ordered for the new pattern."""
        v = self.values.data
        neg = torch.nonzero(v < 0).flatten()
        pos = torch.nonzero(v > 0).flatten()
        drop_neg = neg[torch.argsort(v[neg], descending=True)[: int(zeta * neg.numel())]]  # closest to 0 from below
        drop_pos = pos[torch.argsort(v[pos])[: int(zeta * pos.numel())]]  # closest to 0 from above
        keep = v != 0
        keep[drop_neg] = False
        keep[drop_pos] = False
        rows, cols = self.positions()
        kept = (rows * self.n_in + cols)[keep]
        new = _distinct_positions(v.numel() - kept.numel(), self.n_in * self.n_out, generator, taken=kept)
        all_pos = torch.cat([kept, new])
        all_val = torch.cat([v[keep], torch.randn(new.numel(), generator=generator, dtype=v.dtype) / 10])
        all_mom = torch.cat([momentum[keep], torch.zeros(new.numel(), dtype=momentum.dtype)])
        order = torch.argsort(all_pos)
        self._set_pattern(all_pos[order])
        self.values.data.copy_(all_val[order])
        return all_mom[order]

    def dense_weight(self) -> torch.Tensor:
        """W as a dense matrix: for tests and small checks only (it is what this layer avoids)."""
        return self.matrix(self.values.detach()).to_dense()
