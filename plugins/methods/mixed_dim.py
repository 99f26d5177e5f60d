"""Mixed-dimension embeddings by frequency (Ginart et al. 2019), the baseline for DNIS.

Each table's frequency blocks (_embeddings.py) get a width d_b = clamp(round(lam p_b^T), 1, d),
p_b the mean frequency of the block's features and T the `temperature` (T = 0: one width for
every feature), with lam the largest value whose stored embedding values sum V_b d_b stay within
the knob: `dim` x the tables' feature count, the same budget unit as dnis. A block narrower than
d stores (V_b, d_b) values and a d_b -> d projection (as in the paper), unless storing it at full
width is no larger (tiny head blocks), so the stored count grows with the knob.

With `temperature = 0` and `n_blocks = 1` this is the uniform-dimension baseline: every feature
gets `dim` values and each table one dim -> d projection.

Initialisation (the method runs under `train`, on the fresh model): a block keeps the first d_b
coordinates of the given table's rows and its projection starts as the d x d_b identity, so the
applied model is the fresh model with the other coordinates zeroed; no random draw.
Frequencies: the task's `feature_counts()` (the ctr tasks), else counts over calibration batches.
"""
from __future__ import annotations

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import as_rank, copy_swapping

from ._embeddings import Block, BlockEmbedding, block_counts, frequency_blocks, frequency_tables, mean_frequency, solve_scale


def block_table(table: nn.Embedding, bounds: list[int], widths: list[int]) -> BlockEmbedding:
    d, w = table.embedding_dim, table.weight.detach()
    blocks = []
    for (lo, hi), width in zip(zip(bounds[:-1], bounds[1:]), widths):
        rows = hi - lo
        if width >= d or rows * d <= rows * width + d * width:
            blocks.append(Block(lo, hi, w[lo:hi].clone()))
        else:
            eye = torch.eye(d, width, device=w.device, dtype=w.dtype)
            blocks.append(Block(lo, hi, w[lo:hi, :width].clone(), proj=eye))
    return BlockEmbedding(table.num_embeddings, d, blocks)


class MixedDimMethod(Method):
    name = "mixed-dim"
    kind = "train"
    knob = Knob("dim", 1, None, help="mean embedding size: stored embedding values <= dim x features (projections apart)")
    params = {
        "temperature": Param(0.3, float, low=0.0, high=2.0, help="d_b grows as p_b^temperature (0: uniform)"),
        "n_blocks": Param(4, int, low=1, high=64, help="frequency blocks per table (geometric id ranges)"),
    }
    targets = ("Embedding",)
    identity_at_init = False
    description = ("Mixed-dimension embeddings (Ginart et al.): block widths ~ frequency^temperature with a projection to d, "
                   "trained from scratch; temperature = 0 and n_blocks = 1 is the uniform-dimension baseline.")

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(t.embedding_dim for _, t in frequency_tables(model, self.name))

    def widths(self, model: nn.Module, dim: int, ctx: ApplyContext) -> list[tuple[list[int], list[int]]]:
        """(bounds, widths) per table at knob `dim`."""
        tables = frequency_tables(model, self.name)
        counts = block_counts(tables, ctx)
        bounds = [frequency_blocks(t.num_embeddings, self.hparams["n_blocks"]) for _, t in tables]
        costs = [(hi - lo, mean_frequency(c, lo, hi)) for b, c in zip(bounds, counts) for lo, hi in zip(b[:-1], b[1:])]
        budget = sum(t.num_embeddings * min(dim, t.embedding_dim) for _, t in tables)
        d = max(t.embedding_dim for _, t in tables)
        flat = solve_scale(costs, budget, d, self.hparams["temperature"])
        out, i = [], 0
        for b, (_, t) in zip(bounds, tables):
            n = len(b) - 1
            out.append((b, [min(w, t.embedding_dim) for w in flat[i:i + n]]))
            i += n
        return out

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        dim = as_rank(size, self.name)
        tables = frequency_tables(model, self.name)
        swaps = [(t, block_table(t, b, w)) for (_, t), (b, w) in zip(tables, self.widths(model, dim, ctx))]
        return copy_swapping(model, swaps)


@hookimpl
def register_methods(register) -> None:
    register(MixedDimMethod)
