"""Low-rank embedding tables for afm and svd: E (V x d) stored as codes C (V x r) and a map U (d x r)
(plus a mean mu for AFM), so a looked-up vector is e = U c + mu.

Where the model says which Linear reads the concatenated field vectors (`embedding_consumer()`,
see plugins/tasks/_ctr_models.py), U and mu are folded into that Linear: its block W_f for
field f becomes W_f U_f (h x r) and its bias gains W_f mu_f, so the model stores only the codes
and the narrower Linear; in exact arithmetic the output is unchanged. Elsewhere (AutoInt, whose
projections are shared across fields; any other model) the table becomes a LowRankEmbedding that
keeps U (and mu) as a Linear after the lookup.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import skip_init

from lowdim_bench.api import PluginError
from lowdim_bench.layers import find_layers


@dataclass
class TableFactor:
    """e = up @ codes[id] + mean (float64): codes (V, r), up (d, r), mean (d,) or None."""

    codes: torch.Tensor
    up: torch.Tensor
    mean: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.codes.shape[1])


class LowRankEmbedding(nn.Module):
    """ids -> up(codes(ids)): an embedding table as rank-r codes and an r -> d Linear."""

    def __init__(self, codes: nn.Embedding, up: nn.Linear) -> None:
        super().__init__()
        self.codes = codes
        self.up = up

    @property
    def embedding_dim(self) -> int:
        return self.up.out_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.up(self.codes(ids))


def embedding_tables(model: nn.Module) -> list[tuple[str, nn.Embedding]]:
    """(name, table) of every nn.Embedding whose weight no other module shares."""
    return find_layers(model, (nn.Embedding,), skip_tied=True)


def consumer(model: nn.Module) -> tuple[str, nn.Linear, list[str]] | None:
    """The Linear that reads the concatenation of the tables (name, module, table names), if the
    model declares one and it still has the expected input width."""
    declare = getattr(model, "embedding_consumer", None)
    found = declare() if callable(declare) else None
    if found is None:
        return None
    name, tables = found
    lin = model.get_submodule(name)
    dims = [model.get_submodule(t).embedding_dim for t in tables]
    if not isinstance(lin, nn.Linear) or lin.in_features != sum(dims):
        return None
    return name, lin, list(tables)


def _embedding(codes: torch.Tensor, like: nn.Embedding) -> nn.Embedding:
    """An nn.Embedding holding `codes` (built around the tensor: skip_init of an Embedding is slow)."""
    weight = codes.detach().to(device=like.weight.device, dtype=like.weight.dtype).clone()
    table = nn.Embedding(codes.shape[0], codes.shape[1], _weight=weight)
    table.weight.requires_grad_(like.weight.requires_grad)
    return table


def unfused(table: nn.Embedding, f: TableFactor) -> LowRankEmbedding:
    like = {"device": table.weight.device, "dtype": table.weight.dtype}
    up = skip_init(nn.Linear, f.rank, table.embedding_dim, bias=f.mean is not None, **like)
    with torch.no_grad():
        up.weight.copy_(f.up)
        if f.mean is not None:
            up.bias.copy_(f.mean)
    for p in up.parameters():
        p.requires_grad_(table.weight.requires_grad)
    return LowRankEmbedding(_embedding(f.codes, table), up)


def fused_linear(lin: nn.Linear, widths: list[int], factors: list[TableFactor | None]) -> nn.Linear:
    """`lin` reading the concatenation of per-field vectors (widths) rewritten to read codes:
    block f of W becomes W_f U_f, the bias gains W_f mu_f; a None factor keeps its block."""
    w = lin.weight.detach().double().cpu()
    b = lin.bias.detach().double().cpu() if lin.bias is not None else torch.zeros(lin.out_features, dtype=torch.float64)
    blocks, start = [], 0
    for width, f in zip(widths, factors):
        wf = w[:, start:start + width]
        start += width
        if f is None:
            blocks.append(wf)
            continue
        blocks.append(wf @ f.up)
        if f.mean is not None:
            b = b + wf @ f.mean
    new_w = torch.cat(blocks, dim=1)
    like = {"device": lin.weight.device, "dtype": lin.weight.dtype}
    keep_bias = lin.bias is not None or any(f is not None and f.mean is not None for f in factors)
    out = skip_init(nn.Linear, new_w.shape[1], lin.out_features, bias=keep_bias, **like)
    with torch.no_grad():
        out.weight.copy_(new_w)
        if keep_bias:
            out.bias.copy_(b)
    for p in out.parameters():
        p.requires_grad_(lin.weight.requires_grad)
    return out


def table_swaps(model: nn.Module, factors: dict[str, TableFactor]) -> tuple[list[tuple[nn.Module, nn.Module]], dict[str, nn.Linear]]:
    """Swaps for copy_swapping that put the factored tables in place, and the consumer Linear
    (by name) rewritten to read codes when the model declares one; ({}, when it does not)."""
    if not factors:
        return [], {}
    found = consumer(model)
    if found is not None and not set(factors) <= set(found[2]):
        found = None  # a factored table outside the concatenation: keep every map explicit
    swaps: list[tuple[nn.Module, nn.Module]] = []
    if found is None:
        for name, f in factors.items():
            table = model.get_submodule(name)
            swaps.append((table, unfused(table, f)))
        return swaps, {}
    cname, lin, names = found
    tables = [model.get_submodule(n) for n in names]
    for n, table in zip(names, tables):
        if n in factors:
            swaps.append((table, _embedding(factors[n].codes, table)))
    fused = fused_linear(lin, [t.embedding_dim for t in tables], [factors.get(n) for n in names])
    return swaps, {cname: fused}


def check_tables(model: nn.Module, method: str) -> list[tuple[str, nn.Embedding]]:
    tables = embedding_tables(model)
    if not tables:
        raise PluginError(f"{method}: embeddings = true but the model has no nn.Embedding table")
    return tables


def fusable(model: nn.Module, names: list[str]) -> bool:
    """Whether these tables' maps would be folded into the consumer Linear."""
    found = consumer(model)
    return found is not None and set(names) <= set(found[2])
