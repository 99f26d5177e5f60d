"""Random projections P: R^d -> R^D for intrinsic-dimension training (Li et al. 2018).

Each projection is an nn.Module mapping z (d,) to P z (D,), differentiable in z, with every
column of P of unit norm (so a step in z moves theta by the same length whatever D is). P is a
function of (D, d, seed): its tensors are non-persistent buffers, regenerated from the seed like
a rotary table, so they are not "stored" parameters (docs/measurement.md), yet they are live
tensors that the memory measurements see; `held_bytes()` reports them.

- DenseProjection: Gaussian entries, each column divided by its norm over all D rows. Holds
  D d floats, so it refuses sizes above `max_bytes`.
- SparseProjection: Li et al.'s "very sparse" projection (Li, Hastie, Church 2006): each entry is
  non-zero with probability 1/sqrt(D), with a random sign; each column is then scaled to unit
  norm (1/sqrt(nnz of the column)). Held as a coalesced COO tensor (int64 indices + values);
  an empty column (possible only for tiny D) gets one random entry so no z coordinate is dead.
- FastfoodProjection: V = H G Pi H B (Le et al. 2013) over L = 2^ceil(log2 D), H the
  unnormalised Walsh-Hadamard matrix (entries +-1), B random signs, Pi a random permutation,
  G Gaussian. z is zero-padded to L, transformed, and the first D entries kept. P is never
  formed: the buffers are O(L) and a forward costs two fast Walsh-Hadamard transforms,
  O(L log L), written in torch ops so autograd reaches z.

Fastfood scaling (worked out here, checked by tests): column j of the full L x L transform is
b_j H G Pi h_j with h_j a +-1 column of H, so its squared norm is exactly L * sum(g^2) for every
j. The first D rows of H G w are, over the Gaussian draw of G, i.i.d. N(0, |w|^2 = L) entries,
so a column sliced to D rows has squared norm close to D * sum(g^2) (relative spread
sqrt(2/D) on the squared norm). We divide by sqrt(D * sum(g^2)): columns have unit norm exactly
when D = L and within ~1/sqrt(2D) otherwise (under 1% from D of about 10^4 upward; the
reference code's divisor * sqrt(DD / LL) is the same number).

Blocks: one Fastfood block maps at most L coordinates of z. When d > L, z is cut into
ceil(d / L) chunks of L (the last zero-padded), each goes through its own independent block and
the outputs are summed: P = [P_1 P_2 ...] side by side, every column still of unit norm. A d
that does not divide L needs no special case: zero-padding z to L selects the first d columns
of the block. (Under `intrinsic`, d <= D <= L, so one block is the normal case.)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lowdim_bench.api import PluginError

PROJECTIONS = ("dense", "sparse", "fastfood")


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform along the last axis (length a power of two).

    log2(L) butterfly stages of adds and subtracts, so autograd differentiates it (the
    transform is its own transpose) and it never forms the L x L matrix.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht: length must be a power of two, got {n}")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y.select(-2, 0), y.select(-2, 1)
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n)))


def _check_sizes(kind: str, big: int, small: int) -> None:
    for name, v in (("D", big), ("d", small)):
        if isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise PluginError(f"{kind} projection: {name} must be an integer >= 1, got {v!r}")


class Projection(nn.Module):
    """z (d,) -> P z (D,). Subclasses hold P (or what generates it) as non-persistent buffers."""

    kind: str = ""

    def __init__(self, big: int, small: int) -> None:
        super().__init__()
        _check_sizes(self.kind, big, small)
        self.D, self.d = int(big), int(small)

    def held_bytes(self) -> int:
        """Bytes of every tensor the projection holds (values and indices), one count per storage."""
        seen: set[int] = set()
        total = 0
        for b in self.buffers():
            parts = [b._indices(), b._values()] if b.layout == torch.sparse_coo else [b]
            for t in parts:
                key = t.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += t.untyped_storage().nbytes()
        return total

    def _check_z(self, z: torch.Tensor) -> None:
        if z.dim() != 1 or z.shape[0] != self.d:
            raise ValueError(f"{self.kind} projection: expected z of shape ({self.d},), got {tuple(z.shape)}")

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}"


class DenseProjection(Projection):
    kind = "dense"

    @staticmethod
    def bytes_needed(big: int, small: int) -> int:
        return 4 * big * small

    def __init__(self, big: int, small: int, generator: torch.Generator, max_bytes: int) -> None:
        super().__init__(big, small)
        need = self.bytes_needed(self.D, self.d)
        if need > max_bytes:
            raise PluginError(
                f"dense projection: D={self.D} x d={self.d} needs {need / 2**20:.0f} MiB, over the cap "
                f"max_projection_bytes={max_bytes} ({max_bytes / 2**20:.0f} MiB); use projection='fastfood' "
                "or 'sparse', or raise the cap")
        p = torch.randn(self.D, self.d, generator=generator)
        p /= p.norm(dim=0, keepdim=True)
        self.register_buffer("matrix", p, persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self._check_z(z)
        # an (D, d) @ (d, 1) mm, not a mv: FlopCounterMode counts mm (2 D d) and not mv
        return (self.matrix.to(z.dtype) @ z.unsqueeze(1)).squeeze(1)


class SparseProjection(Projection):
    kind = "sparse"

    @staticmethod
    def density(big: int) -> float:
        return 1.0 / math.sqrt(big)

    @staticmethod
    def bytes_needed(big: int, small: int) -> int:
        """Expected bytes: d sqrt(D) non-zeros of (2 int64 indices + 1 float32 value)."""
        return int(20 * small * big * SparseProjection.density(big)) + 20 * small

    def __init__(self, big: int, small: int, generator: torch.Generator, max_bytes: int) -> None:
        super().__init__(big, small)
        need = self.bytes_needed(self.D, self.d)
        if need > max_bytes:
            raise PluginError(
                f"sparse projection: D={self.D} x d={self.d} needs about {need / 2**20:.0f} MiB of values and "
                f"indices, over the cap max_projection_bytes={max_bytes}; use projection='fastfood' or raise the cap")
        rows, cols = self._draw(generator)
        signs = torch.randint(0, 2, (rows.numel(),), generator=generator).mul_(2).sub_(1).float()
        per_col = torch.bincount(cols, minlength=self.d).float()
        values = signs / per_col[cols].sqrt()
        p = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (self.D, self.d),
                                    check_invariants=False).coalesce()  # indices in range by construction
        self.register_buffer("matrix", p, persistent=False)

    def _draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of i.i.d. Bernoulli(1/sqrt D) entries in O(nnz) time: the gaps between
        successive hits, column-major over the D d entries, are Geometric(p)."""
        p, total = self.density(self.D), self.D * self.d
        chunks, end = [], 0
        while end < total:
            want = max(16, int(1.1 * (total - end) * p) + 16)
            gaps = torch.empty(want, dtype=torch.float64).geometric_(p, generator=generator).long()
            pos = end - 1 + torch.cumsum(gaps, 0)
            chunks.append(pos[pos < total])
            end = int(pos[-1]) + 1
        flat = torch.cat(chunks)
        rows, cols = flat % self.D, flat // self.D
        empty = (torch.bincount(cols, minlength=self.d) == 0).nonzero().flatten()
        if empty.numel():  # only for tiny D: give each dead column one random row
            rows = torch.cat([rows, torch.randint(0, self.D, (empty.numel(),), generator=generator)])
            cols = torch.cat([cols, empty])
        return rows, cols

    @property
    def nnz(self) -> int:
        return int(self.matrix._nnz())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self._check_z(z)
        return torch.sparse.mm(self.matrix.to(z.dtype), z.unsqueeze(1)).squeeze(1)


class FastfoodProjection(Projection):
    kind = "fastfood"

    def __init__(self, big: int, small: int, generator: torch.Generator) -> None:
        super().__init__(big, small)
        self.L = next_pow2(self.D)
        self.blocks = math.ceil(self.d / self.L)
        n, L = self.blocks, self.L
        signs = torch.randint(0, 2, (n, L), generator=generator).mul_(2).sub_(1).float()
        perm = torch.stack([torch.randperm(L, generator=generator) for _ in range(n)])
        gauss = torch.randn(n, L, generator=generator)
        gauss /= (self.D * gauss.pow(2).sum(dim=1, keepdim=True)).sqrt()  # the column scaling, folded into G
        self.register_buffer("signs", signs, persistent=False)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("gauss", gauss, persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self._check_z(z)
        n, L = self.blocks, self.L
        x = torch.nn.functional.pad(z, (0, n * L - self.d)).reshape(n, L)
        x = fwht(x * self.signs.to(z.dtype))                   # H B z
        x = torch.gather(x, 1, self.perm) * self.gauss.to(z.dtype)  # G Pi (H B z)
        x = fwht(x)                                            # H G Pi H B z
        return x.sum(0)[: self.D] if n > 1 else x[0, : self.D]

    def transform_flops(self) -> int:
        """What one application needs: per block two FWHTs (L log2 L adds/subtracts each) and
        the two diagonal scalings (B, G with the column scale folded in: 2 L multiplies), plus
        (blocks - 1) L adds to sum the blocks. The permutation is a gather, no arithmetic."""
        L, n = self.L, self.blocks
        return n * (2 * L * int(math.log2(L)) + 2 * L) + (n - 1) * L

    # the flops.py `ideal_flops` protocol: FlopCounterMode sees no matmul here (executed = 0),
    # so the ideal figure declares the transform's arithmetic; its transpose costs the same.
    def ideal_flops(self, z: torch.Tensor) -> int:
        return self.transform_flops()

    def ideal_backward_flops(self, z: torch.Tensor) -> int:
        return self.transform_flops() if z.requires_grad else 0

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}, L={self.L}, blocks={self.blocks}"


def make_projection(kind: str, big: int, small: int, seed: int, max_bytes: int) -> Projection:
    """A projection drawn from its own generator seeded with `seed`, so it is reproducible."""
    gen = torch.Generator().manual_seed(int(seed))
    if kind == "dense":
        return DenseProjection(big, small, gen, max_bytes)
    if kind == "sparse":
        return SparseProjection(big, small, gen, max_bytes)
    if kind == "fastfood":
        return FastfoodProjection(big, small, gen)
    raise PluginError(f"unknown projection {kind!r}; known: {list(PROJECTIONS)}")


def largest_dim(kind: str, big: int, max_bytes: int) -> int:
    """The largest d (<= D) whose projection fits under the byte cap (every d for Fastfood)."""
    if kind == "dense":
        return min(big, max_bytes // DenseProjection.bytes_needed(big, 1))
    if kind == "sparse":
        per = 20 * big * SparseProjection.density(big) + 20
        return min(big, int(max_bytes // per))
    return big
