"""Frequency blocks and block-wise embedding tables, shared by dnis and mixed-dim.

Both methods give frequent features more embedding dimensions than rare ones. They need the
table's ids in frequency order (id 0 the most frequent), which a model declares with
`ids_by_frequency = True` (the ctr tasks' models do): a frequency block is then an id range and
costs no per-feature index.

Blocks: `n_blocks` id ranges with geometric bounds, [0, V^(1/n)), [V^(1/n), V^(2/n)), ...,
so each block holds features of similar frequency under a power law (the head is split finely,
the long tail is one block). A BlockEmbedding stores, per non-empty block, only its values
(V_b x d_b) plus either the output coordinates they fill (DNIS: an int index, kept dims) or a
d_b -> d projection (mixed dimensions, Ginart et al. 2019); nothing is stored as zeros.
"""
from __future__ import annotations

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.layers import find_layers


def frequency_blocks(vocab: int, n_blocks: int) -> list[int]:
    """Bounds b_0 = 0 < b_1 < ... < b_m = vocab of at most `n_blocks` geometric id ranges."""
    bounds = {0, vocab}
    for i in range(1, n_blocks):
        bounds.add(min(vocab, max(1, int(round(vocab ** (i / n_blocks))))))
    return sorted(bounds)


def frequency_tables(model: nn.Module, method: str) -> list[tuple[str, nn.Embedding]]:
    """Every untied nn.Embedding of a model whose ids are in frequency order."""
    if not getattr(model, "ids_by_frequency", False):
        raise PluginError(f"{method}: needs a model whose embedding ids are frequency ranks (id 0 the most frequent) "
                          f"and says so with `ids_by_frequency = True` (the ctr tasks' models do); "
                          f"{type(model).__name__} does not")
    tables = find_layers(model, (nn.Embedding,), skip_tied=True)
    if not tables:
        raise PluginError(f"{method}: the model has no nn.Embedding table")
    return tables


def block_counts(tables: list[tuple[str, nn.Embedding]], ctx: ApplyContext) -> list[torch.Tensor]:
    """Training count of every id of every table: the task's `feature_counts()` when it has one
    (the ctr tasks), else counted over the calibration batches (a short sample: +1 smoothing)."""
    counts_of = getattr(ctx.task, "feature_counts", None)
    if callable(counts_of):
        counts = [c.double() for c in counts_of("target")]
        if len(counts) == len(tables) and all(len(c) == t.num_embeddings for c, (_, t) in zip(counts, tables)):
            return counts
    counts = [torch.ones(t.num_embeddings, dtype=torch.float64) for _, t in tables]
    for inputs in ctx.calibration():
        x = inputs.tensors()[0].detach().cpu()
        for f, c in enumerate(counts):
            c += torch.bincount(x[:, f].long(), minlength=len(c)).double()
    return counts


class Block(nn.Module):
    """Features lo..hi-1 of a table: values (hi - lo, d_b), then either the output coordinates
    `dims` they fill or a projection d_b -> dim (None: d_b == dim, identity)."""

    def __init__(self, lo: int, hi: int, values: torch.Tensor, dims: torch.Tensor | None = None,
                 proj: torch.Tensor | None = None) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi
        self.weight = nn.Parameter(values)
        if dims is not None:
            self.register_buffer("dims", dims.to(torch.int64))
        else:
            self.dims = None
        self.proj: nn.Linear | None = None
        if proj is not None:
            self.proj = nn.Linear(proj.shape[1], proj.shape[0], bias=False, device=values.device, dtype=values.dtype)
            with torch.no_grad():
                self.proj.weight.copy_(proj)

    @property
    def width(self) -> int:
        return int(self.weight.shape[1])

    def extra_repr(self) -> str:
        return f"ids {self.lo}..{self.hi - 1}, width {self.width}"


class BlockEmbedding(nn.Module):
    """ids (B,) -> (B, dim): each id's block writes its stored vector, zeros elsewhere."""

    def __init__(self, num_embeddings: int, dim: int, blocks: list[Block]) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = dim
        self.blocks = nn.ModuleList(blocks)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        ref = self.blocks[0].weight if len(self.blocks) else None
        out = torch.zeros(flat.shape[0], self.embedding_dim, device=flat.device,
                          dtype=ref.dtype if ref is not None else torch.get_default_dtype())
        for blk in self.blocks:
            sel = ((flat >= blk.lo) & (flat < blk.hi)).nonzero(as_tuple=True)[0]
            vals = blk.weight[flat[sel] - blk.lo]
            if blk.proj is not None:
                vals = blk.proj(vals)
            if blk.dims is not None:
                out = out.index_put((sel[:, None], blk.dims[None, :]), vals)
            else:
                out = out.index_put((sel,), vals)
        return out.reshape(*ids.shape, self.embedding_dim)

    def widths(self) -> list[tuple[int, int, int]]:
        """(lo, hi, stored width) of every stored block."""
        return [(b.lo, b.hi, b.width) for b in self.blocks]


def embedding_values(tables: list[tuple[str, nn.Module]]) -> int:
    """Values the dense tables store: sum of V x d."""
    return sum(t.num_embeddings * t.embedding_dim for _, t in tables)


def solve_scale(costs: list[tuple[int, float]], budget: float, dim: int, temperature: float) -> list[int]:
    """Mixed dimensions: d_b = clamp(round(lam p_b^T), 1, dim) for the largest lam whose total
    sum V_b d_b fits the budget (bisection on lam). costs: (V_b, p_b) per block."""
    def dims(lam: float) -> list[int]:
        return [min(dim, max(1, int(round(lam * (p ** temperature))))) for _, p in costs]

    def total(lam: float) -> int:
        return sum(v * d for (v, _), d in zip(costs, dims(lam)))

    lo, hi = 0.0, 1.0
    while total(hi) <= budget and dims(hi) != [dim] * len(costs):
        hi *= 2.0
        if hi > 1e30:
            break
    if total(hi) <= budget:
        return dims(hi)
    for _ in range(200):
        mid = (lo + hi) / 2
        if total(mid) <= budget:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return dims(lo)


def mean_frequency(counts: torch.Tensor, lo: int, hi: int) -> float:
    total = float(counts.sum())
    return float(counts[lo:hi].sum()) / max(1, hi - lo) / max(total, 1.0)
