"""One-shot truncated-SVD compression (LoRD: Kaushal et al. 2023).

Each nn.Linear W (d_out, d_in) = U S V^T becomes two Linears: first = S_r^1/2 V_r^T (r x d_in, no
bias), second = U_r S_r^1/2 (d_out x r, the original bias). Parameters r (d_in + d_out) + bias,
forward FLOPs 2 B r (d_in + d_out).

Choices (also in the report and docs):
- The SVD runs in float64 and the factors are cast to the weight's dtype, so full rank
  reproduces the dense output to float32 rounding.
- `skip_above_break_even` (default True): a layer whose rank r is at or above the break-even
  rank r* = d_in d_out / (d_in + d_out) stays dense, because factoring it would grow the model.
  A layer then counts min(r (d_in + d_out), d_in d_out) + bias, which is still monotone in r,
  so the budget search works. With False, r is clamped to min(d_in, d_out).
- Targets every Linear by default (`target_modules`: "all" or a list of name suffixes); Linears
  whose weight is shared with another module (tied heads) or owned by nn.MultiheadAttention are
  left dense. The model records each layer left dense and why (_skips: break-even, tied).
- `recover` (default False, the one-shot result) is read by the harness: when true, the
  compressed model is fine-tuned with the task's "recover" recipe (its steps and rate; a suite
  changes them with [methods.NAME.recipe]).
- The SVD of each original weight is cached while that tensor lives and is unchanged (keyed by
  tensor identity and version), because the budget search applies the method several times.
- `embeddings` (default False, so models with tables keep their behaviour): every untied
  nn.Embedding E (V x d) is factored too, E ~ (U_r S_r^1/2)(S_r^1/2 V_r^T): codes V x r and a map
  r x d, the map folded into the Linear that reads the concatenated tables when the model
  declares one (`embedding_consumer()`), else kept after the lookup (_embedding_factors.py). A
  table stays dense at r >= d (folded) or at r (V + d) >= V d.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init
from torch.utils.weak import WeakIdKeyDictionary

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import (RECOVER, SKIP_ABOVE_BREAK_EVEN, TARGET_MODULES, as_rank, check_suffixes, copy_swapping,
                                 find_layers, split_by_suffixes)
from lowdim_bench_builtin.methods._embedding_factors import TableFactor, check_tables, fusable, table_swaps
from lowdim_bench_builtin.methods._skips import record_skips, tied_linears

# weight tensor -> (its _version when decomposed, U, S, Vh) in float64
_SVD_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def svd64(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of `weight` in float64, cached while the tensor is alive and unmodified."""
    hit = _SVD_CACHE.get(weight)
    if hit is not None and hit[0] == weight._version:
        return hit[1], hit[2], hit[3]
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    _SVD_CACHE[weight] = (weight._version, u, s, vh)
    return u, s, vh


class FactoredLinear(nn.Module):
    """y = second(first(x)): a Linear of rank `rank` stored as its two factors."""

    def __init__(self, first: nn.Linear, second: nn.Linear) -> None:
        super().__init__()
        self.first = first
        self.second = second

    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    @property
    def rank(self) -> int:
        return self.first.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The product second @ first (not stored), for parents that read `.weight` directly,
        such as nn.TransformerEncoderLayer's inference fast path."""
        return self.second.weight @ self.first.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.second.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def factor_linear(linear: nn.Linear, rank: int) -> FactoredLinear:
    """The rank-`rank` truncated SVD of `linear`, split evenly (S^1/2 on each side)."""
    u, s, vh = svd64(linear.weight)
    root = s[:rank].sqrt()
    like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
    first = skip_init(nn.Linear, linear.in_features, rank, bias=False, **like)
    second = skip_init(nn.Linear, rank, linear.out_features, bias=linear.bias is not None, **like)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root[None, :])
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    for p in (*first.parameters(), *second.parameters()):
        p.requires_grad_(linear.weight.requires_grad)
    return FactoredLinear(first, second)


def layer_rank(linear: nn.Linear, rank: int, skip_above_break_even: bool) -> int | None:
    """The rank this layer is factored at, or None when it stays dense."""
    d_in, d_out = linear.in_features, linear.out_features
    r = min(rank, d_in, d_out)
    if skip_above_break_even and r * (d_in + d_out) >= d_in * d_out:
        return None
    return r


class SvdMethod(Method):
    name = "svd"
    kind = "compress"
    knob = Knob("rank", 1, None)
    params = {"target_modules": TARGET_MODULES, "skip_above_break_even": SKIP_ABOVE_BREAK_EVEN, "recover": RECOVER,
              "embeddings": Param(False, bool, help="also factor embedding tables (E = (U_r S_r^1/2)(S_r^1/2 V_r^T), "
                                  "V fused into the layer that reads them where it can be)")}
    targets = ("Linear",)
    identity_at_init = False
    description = "LoRD one-shot truncated SVD: each Linear -> (U_r S_r^1/2)(S_r^1/2 V_r^T); layers at/above break-even rank stay dense."

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        check_suffixes(h["target_modules"], "all", method="svd", hparam="target_modules")
        for key in ("recover", "embeddings"):
            if not isinstance(h[key], bool):
                raise PluginError(f"svd: {key} must be true or false, got {h[key]!r}")

    def select(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        """(name, Linear) of every layer this method may factor, in registration order."""
        tm = self.hparams["target_modules"]
        found = find_layers(model, (nn.Linear,), skip_tied=True)
        if tm != "all":
            found, _ = split_by_suffixes(found, tm, method="svd", hparam="target_modules", what="factorable Linear")
        if not found:
            raise PluginError("svd: the model has no Linear layer to factor")
        return found

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        ranks = [min(m.in_features, m.out_features) for _, m in self.select(model)]
        if self.hparams["embeddings"]:
            ranks += [min(t.num_embeddings, t.embedding_dim) for _, t in check_tables(model, self.name)]
        return 1, max(ranks)

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        skip = bool(self.hparams["skip_above_break_even"])
        # Factor from the original weights, so the SVD cache hits across applies.
        tables, fused = table_swaps(model, self.table_factors(model, rank, skip))
        swaps, selected, skips = [], self.select(model), tied_linears(model)
        for name, linear in selected:
            r = layer_rank(fused.get(name, linear), rank, skip)
            if r is not None:
                swaps.append((linear, factor_linear(fused.get(name, linear), r)))
            else:
                skips[name] = break_even_reason(linear.in_features, linear.out_features, rank)
                if name in fused:
                    swaps.append((linear, fused[name]))
        names = {n for n, _ in selected}
        swaps += [(model.get_submodule(n), lin) for n, lin in fused.items() if n not in names]
        return record_skips(copy_swapping(model, swaps + tables), skips)

    def table_factors(self, model: nn.Module, rank: int, skip: bool) -> dict[str, TableFactor]:
        """Codes U_r S_r^1/2 and map (S_r^1/2 V_r^T)^T of each factored table (embeddings = true)."""
        if not self.hparams["embeddings"]:
            return {}
        tables = check_tables(model, self.name)
        folded = fusable(model, [n for n, _ in tables])
        out = {}
        for name, t in tables:
            v, d = t.num_embeddings, t.embedding_dim
            r = min(rank, v, d)
            if skip and ((folded and r >= d) or (not folded and r * (v + d) >= v * d)):
                continue
            u, s, vh = svd64(t.weight)
            root = s[:r].sqrt()
            out[name] = TableFactor(u[:, :r] * root[None, :], (root[:, None] * vh[:r]).t())
        return out


def break_even_reason(d_in: int, d_out: int, rank: int) -> str:
    return (f"rank {min(rank, d_in, d_out)} >= break-even {d_in * d_out / (d_in + d_out):.1f} of a {d_out}x{d_in} "
            "weight: factored it would be larger, so it stays dense")


@hookimpl
def register_methods(register) -> None:
    register(SvdMethod)
