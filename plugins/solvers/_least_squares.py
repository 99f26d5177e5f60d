"""One AltMin half-step: a small least-squares problem per row (or column), all rows at once.

For row j with observed entries Omega_j, the update is x_j = argmin_x ||A_j x - y_j||_2 with
A_j = F[Omega_j] (|Omega_j| x k, F the fixed factor) and y_j the observed values.
- `exact_side` (Jain, Netrapalli and Sanghavi 2013): normal equations A_j^T A_j x = A_j^T y_j,
  solved by Cholesky: O(|Omega_j| k^2 + k^3) per row. The Gram matrices are batched GEMMs over
  blocks of rows of similar length (A_j gathered, padded with a zero row of F).
- `sketched_side` (Gu, Song, Yin and Zhang 2023): a sparse embedding S_j (s x |Omega_j|, `nnz`
  signed entries per column, s = O(k)) gives S_j A_j, whose R factor (R^T R = (S_j A_j)^T
  S_j A_j, from a Cholesky: see `_preconditioner`) preconditions CG;
  x0 = argmin ||S_j A_j x - S_j y_j|| (sketch-and-solve) is refined by `cg_steps` steps of CG
  on the normal equations preconditioned by P_j = (R^T R)^{-1}. A_j^T A_j is never formed: a CG
  step is one sampled product (A_j p_j at the observed entries, SDDMM) and one sparse product
  (A_j^T t), O(|Omega| k) for all rows together, plus O(k^2) per row for P_j; the sketches and
  QRs add O(nnz |Omega| k + n s k^2). A row with at most s entries is its own "sketch".

Each solver runs on the kernels its own operations suit: the exact Gram is compute-bound
(k^2 work per gathered entry: a GEMM), CG's products are memory-bound (k per entry: CSR
kernels). Tried and dropped: the Gram as one CSR product with the rows of F (x) F (reads k^2
floats per entry from memory; over 10x slower at k = 32), and CG as padded batched matrix-vector
products (over 10x less efficient per FLOP than GEMM). `flops_*` declare each half-step's FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._contract import csr_tensor

_TINY = 1e-300


@dataclass
class Block:
    """Rows `ids` (b,) of similar length: `other` (b, c) their entries' indices on the other
    side, padded with n_in (a zero row appended to F); `values` (b, c), 0 where padded."""

    ids: torch.Tensor
    other: torch.Tensor
    values: torch.Tensor

    @property
    def padded(self) -> int:
        return int(self.other.shape[1])


@dataclass
class Side:
    """The observed entries as seen when solving for the rows of one factor: CSR (n_out x n_in)
    pattern `crow`/`col`, the observed `values` in that order, `counts` entries per row, and the
    same rows in padded `blocks` for the exact solver's GEMMs."""

    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    counts: torch.Tensor
    shape: tuple[int, int]
    blocks: list[Block]

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        return csr_tensor(self.crow, self.col, values, self.shape)

    @property
    def entries(self) -> int:
        return int(self.values.numel())


def make_side(index: torch.Tensor, other: torch.Tensor, values: torch.Tensor, n_out: int, n_in: int,
              block_elems: int = 1 << 15) -> Side:
    """`block_elems`: padded entries per block (times k floats gathered; a cache-size knob)."""
    order = torch.argsort(index * n_in + other)
    index, other, values = index[order], other[order].contiguous(), values[order].contiguous()
    crow, col = _crow_col(index, other, n_out)
    counts = torch.bincount(index, minlength=n_out)
    return Side(crow, col, values, counts, (n_out, n_in), _blocks(crow, col, values, counts, n_in, block_elems))


def _blocks(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, counts: torch.Tensor, pad: int,
            block_elems: int) -> list[Block]:
    """Rows sorted by length, cut into blocks of about `block_elems` padded entries; empty rows
    are left out (their least-squares solution is zero)."""
    by_len = torch.argsort(counts, stable=True)
    by_len = by_len[counts[by_len] > 0]
    lengths = counts[by_len].tolist()
    out, i = [], 0
    while i < len(lengths):
        j = i + 1
        while j < len(lengths) and (j - i + 1) * lengths[j] <= block_elems:
            j += 1
        ids = by_len[i:j]
        pos = torch.arange(lengths[j - 1])
        real = pos[None, :] < counts[ids][:, None]
        flat = (crow[ids][:, None] + pos[None, :]).clamp(max=max(values.numel() - 1, 0))
        out.append(Block(ids, torch.where(real, col[flat], pad), torch.where(real, values[flat], 0.0)))
        i = j
    return out


def _cholesky(gram: torch.Tensor, jitter: float) -> torch.Tensor:
    """Cholesky factors; only a singular Gram (a row with fewer than k entries) gets `jitter`
    times its mean diagonal added, which picks a small-norm solution (zero for an empty row)."""
    chol, info = torch.linalg.cholesky_ex(gram)
    bad = info > 0
    if bool(bad.any()):
        k = gram.shape[-1]
        scale = gram[bad].diagonal(dim1=1, dim2=2).mean(1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        chol[bad] = torch.linalg.cholesky_ex(gram[bad] + (jitter * scale)[:, None, None] * torch.eye(k, dtype=gram.dtype))[0]
    return chol


def _solve_spd(gram: torch.Tensor, rhs: torch.Tensor, jitter: float) -> torch.Tensor:
    return torch.cholesky_solve(rhs[..., None], _cholesky(gram, jitter))[..., 0]


def exact_side(fixed: torch.Tensor, side: Side, jitter: float = 1e-12) -> torch.Tensor:
    n_out, k = side.shape[0], fixed.shape[1]
    padded = torch.cat([fixed, fixed.new_zeros(1, k)])
    gram = fixed.new_zeros(n_out, k, k)
    rhs = fixed.new_zeros(n_out, k)
    for b in side.blocks:
        a = padded[b.other]  # (b, c, k)
        at = a.transpose(1, 2)
        gram[b.ids] = at @ a
        rhs[b.ids] = _mv(at, b.values)
    return _solve_spd(gram, rhs, jitter)


@dataclass
class Sketch:
    """Sparse embeddings for every row of a side, stacked: `matrix` (n_out s x n_in) maps the
    fixed factor to S_j A_j for all j at once; `sy` (n_out, s) is S_j y_j (y is fixed)."""

    matrix: torch.Tensor
    sy: torch.Tensor
    rows: int


def draw_sketch(side: Side, s: int, nnz: int, generator: torch.Generator) -> Sketch:
    """One embedding per row, drawn once per solve and reused every round: each round's A_j spans
    a fixed subspace, so one embedding serves all rounds (a union bound over them). A row with at
    most s entries keeps them as they are (bucket = its position, sign +1): no sketch needed."""
    n_out = side.shape[0]
    row = torch.repeat_interleave(torch.arange(n_out), side.counts)
    pos = torch.arange(side.entries) - side.crow[:-1][row]
    short = (side.counts <= s)[row]
    reps = [torch.full_like(row, 0)] if nnz == 1 else [torch.full_like(row, c) for c in range(nnz)]
    buckets, signs, rows, cols, vals = [], [], [], [], []
    for rep in reps:
        rand = torch.randint(0, s, (side.entries,), generator=generator)
        sign = (torch.randint(0, 2, (side.entries,), generator=generator, dtype=side.values.dtype) * 2 - 1) / nnz**0.5
        keep = ~short | (rep == 0)  # a short row is copied once, unsigned
        b = torch.where(short, pos, rand)[keep]
        sg = torch.where(short, torch.ones_like(sign), sign)[keep]
        rows.append(row[keep] * s + b)
        cols.append(side.col[keep])
        vals.append(sg)
        buckets.append(rows[-1])
        signs.append(sg * side.values[keep])
    idx = torch.stack([torch.cat(rows), torch.cat(cols)])
    coo = torch.sparse_coo_tensor(idx, torch.cat(vals), (n_out * s, side.shape[1]), check_invariants=False).coalesce()
    i = coo.indices()
    matrix = csr_tensor(*_crow_col(i[0], i[1], n_out * s), coo.values(), (n_out * s, side.shape[1]))
    sy = torch.zeros(n_out * s, dtype=side.values.dtype).index_add_(0, torch.cat(buckets), torch.cat(signs))
    return Sketch(matrix, sy.view(n_out, s), s)


def _crow_col(rows: torch.Tensor, cols: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR index arrays from row-sorted COO indices."""
    crow = torch.zeros(n_rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return crow, cols


def _mv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (m @ v[..., None])[..., 0]


def _preconditioner(sa: torch.Tensor, sy: torch.Tensor, jitter: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """P = (R^T R)^{-1} = ((S A)^T S A)^{-1} and the sketch-and-solve x0 = P (S A)^T S y.
    R is taken as the Cholesky factor of the sketched Gram rather than from a QR of S A: the
    same R up to signs, and on CPU a batched GEMM plus k x k Cholesky costs a fraction of a
    batched Householder QR (which, at s = 4k, took as long as the exact solver's Gram)."""
    sat = sa.transpose(1, 2)
    chol = _cholesky(sat @ sa, jitter)
    p_mat = torch.cholesky_inverse(chol)
    return p_mat, _mv(p_mat, _mv(sat, sy))


def sketched_side(fixed: torch.Tensor, side: Side, cg_steps: int, sketch: Sketch | None) -> torch.Tensor:
    """Sketch-preconditioned CG per row (module docstring); `sketch=None` is plain CG on the
    normal equations from x = 0 (the ablation without a preconditioner)."""
    n_out, k = side.shape[0], fixed.shape[1]
    pattern = side.matrix(torch.zeros_like(side.values))
    fixed_t = fixed.T.contiguous()

    def at(entry_values: torch.Tensor) -> torch.Tensor:  # A_j^T t_j for every row: (n_out, k)
        return side.matrix(entry_values) @ fixed

    def a(x: torch.Tensor) -> torch.Tensor:  # A_j x_j at every observed entry (SDDMM)
        return torch.sparse.sampled_addmm(pattern, x, fixed_t, beta=0.0).values()

    if sketch is not None:
        sa = (sketch.matrix @ fixed).view(n_out, sketch.rows, k)
        p_mat, x = _preconditioner(sa, sketch.sy)
        res = at(side.values - a(x))
        z = _mv(p_mat, res)
    else:
        x = torch.zeros(n_out, k, dtype=fixed.dtype)
        res = at(side.values)
        z = res
    p = z
    rz = (res * z).sum(1)
    for _ in range(cg_steps):
        q = at(a(p))
        pq = (p * q).sum(1)
        alpha = torch.where(pq > _TINY, rz / pq.clamp_min(_TINY), torch.zeros_like(pq))
        x = x + alpha[:, None] * p
        res = res - alpha[:, None] * q
        z = _mv(p_mat, res) if sketch is not None else res
        rz_new = (res * z).sum(1)
        beta = torch.where(rz > _TINY, rz_new / rz.clamp_min(_TINY), torch.zeros_like(rz))
        p = z + beta[:, None] * p
        rz = rz_new
    return x


# ---- declared cost (FLOPs of one half-step) ---------------------------------------------------
# "omega": products that grow with the observed entries (the paper's |Omega| k^2 vs |Omega| k);
# "rows": batched k x k products per row; "factor": Cholesky, QR and triangular solves.
def flops_exact(side: Side, k: int) -> dict[str, int]:
    """omega: Gram 2 c k^2 and right-hand side 2 c k per row, c its padded length; factor:
    Cholesky k^3 / 3 and its two triangular solves 2 k^2 per row."""
    omega = sum(2 * b.ids.numel() * b.padded * k * (k + 1) for b in side.blocks)
    return {"omega": omega, "rows": 0, "factor": side.shape[0] * (k**3 // 3 + 2 * k * k)}


def flops_sketched(side: Side, k: int, s: int, nnz: int, cg_steps: int, precondition: bool = True) -> dict[str, int]:
    """omega: the sketch 2 nnz' |Omega| k (nnz' = 1 on rows no longer than s; with nnz > 1 an
    upper bound, as copies of an entry landing in one bucket merge), the initial residual and
    every CG step one SDDMM and one CSR product, 2 |Omega| k each; rows: the sketched Gram
    (2 s k^2), (S A)^T S y (2 s k), P times a vector at x0, at the start and per step (2 k^2
    each); factor: Cholesky (k^3 / 3) and P from it (2 k^3 / 3)."""
    e, n_out = side.entries, side.shape[0]
    if not precondition:
        return {"omega": 2 * e * k + cg_steps * 4 * e * k, "rows": 0, "factor": 0}
    long = side.counts > s
    sketch_entries = int(side.counts[long].sum()) * nnz + int(side.counts[~long].sum())
    return {"omega": 2 * sketch_entries * k + 4 * e * k + cg_steps * 4 * e * k,
            "rows": n_out * (2 * s * k * k + 2 * s * k + (cg_steps + 2) * 2 * k * k),
            "factor": n_out * k**3}
