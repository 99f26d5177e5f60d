"""AFM, atomic feature mimicking (Yu and Wu 2023): compress a Linear's outputs, not its weight.

On calibration inputs (ApplyContext.calibration: model inputs from the task's training split) each
target Linear's outputs y = W x + b are collected; mu = E[y], C = Cov(y) (float64), and U_k holds
the top-k eigenvectors of C (eigh). The layer becomes first = U_k^T W (bias U_k^T b) followed by
second = U_k (bias (I - U_k U_k^T) mu), which computes exactly mu + U_k U_k^T (y - mu): the
projection of y onto its top-k principal directions. At k = d_out it is the layer itself.

Parameters per layer k (d_in + d_out) + k + d_out (k (d_in + d_out) + d_out for a bias-free layer:
first then has no bias, second still carries the mean term). Forward FLOPs 2 B k (d_in + d_out),
the same as svd at equal k.

Choices (also in the report and docs):
- Statistics come from the uncompressed model, all layers in one calibration pass (forward hooks
  in eval mode under no_grad; each module's train/eval flag is restored). They are merged batch by
  batch in float64 (Chan's pairwise update), Cov with 1/N. Inputs of shape (..., d_in) count every
  position (each token of a sequence) as a sample, except padding: when a calibration batch has
  an `attention_mask` keyword of shape (B, L), (B, L, d) outputs count only the positions it keeps.
- `calibration_batches` (default 8): at most that many batches are read from the calibration
  stream (the harness yields 8 of 64 samples). The statistics are cached on the method object
  for the model and weight versions they came from, since the budget search applies many times.
- Targets every nn.Linear except the head (`skip_modules`, as sltrain: "auto" skips Linears whose
  last name part is a head name, else the last Linear; or a list of name suffixes). Linears with
  tied weights or owned by nn.MultiheadAttention stay dense.
- `embeddings` (default False, so models with tables keep their behaviour): every untied
  nn.Embedding is compressed too, from the statistics of its looked-up vectors: E' = (E - mu^T)
  U_k (V x k) with U_k and mu folded into the Linear that reads the concatenated tables when the
  model declares one (`embedding_consumer()`), else kept as an explicit k -> d map with bias mu
  (_embedding_factors.py). A table stays dense at k >= d (folded) or when its factored form would
  not be smaller.
- `skip_above_break_even` (default True): a layer whose AFM form would have at least as many
  parameters as the dense layer stays dense, so counts are min(AFM, dense) per layer, monotone in
  k (the budget search relies on it). With False, k is clamped to d_out.
- `recover` (default False): with true the harness fine-tunes both factors (and biases) with the
  task's "recover" recipe.
- Linears the calibration never reaches (an unused pooler) stay dense; the returned model records
  each layer left out and why (_skips: head, break-even, tied, unreached).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.utils import skip_init

from lowdim_bench.api import ApplyContext, Inputs, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import (RECOVER, SKIP_ABOVE_BREAK_EVEN, SKIP_MODULES, as_rank, body_linears, check_suffixes,
                                 copy_swapping, find_layers)
from lowdim_bench_builtin.methods._embedding_factors import TableFactor, check_tables, fusable, table_swaps
from lowdim_bench_builtin.methods._skips import record_skips, tied_linears
from lowdim_bench_builtin.methods.svd import FactoredLinear


@dataclass
class OutputStats:
    """Running mean and scatter (sum of centred outer products) of a layer's outputs, float64."""

    count: int
    mean: torch.Tensor
    scatter: torch.Tensor

    @classmethod
    def empty(cls, dim: int) -> "OutputStats":
        return cls(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))

    def update(self, y: torch.Tensor) -> None:
        """Merge a batch (Chan et al.'s pairwise formula), so large offsets do not cancel."""
        y = y.detach().reshape(-1, y.shape[-1]).to(device="cpu", dtype=torch.float64)
        nb = y.shape[0]
        if nb == 0:
            return
        mb = y.mean(0)
        yc = y - mb
        delta = mb - self.mean
        total = self.count + nb
        self.scatter += yc.t() @ yc + torch.outer(delta, delta) * (self.count * nb / total)
        self.mean += delta * (nb / total)
        self.count = total

    def covariance(self) -> torch.Tensor:
        return self.scatter / self.count


@dataclass
class Principal:
    """A layer's output mean and the eigenvectors of its covariance, largest eigenvalue first."""

    mean: torch.Tensor
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor  # (d_out, d_out), columns


def principal(stats: OutputStats) -> Principal:
    evals, evecs = torch.linalg.eigh(stats.covariance())
    return Principal(stats.mean.clone(), evals.flip(0), evecs.flip(1).contiguous())


def out_width(layer: nn.Module) -> int:
    """Width of a layer's output: a Linear's out_features, an Embedding's embedding_dim."""
    return layer.embedding_dim if isinstance(layer, nn.Embedding) else layer.out_features


def real_positions(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of a (B, L, d) output at the tokens an attention mask keeps: padding positions
    are not data, and on short texts they would outnumber the real tokens in the statistics."""
    if mask is None or out.dim() != 3 or tuple(out.shape[:2]) != tuple(mask.shape):
        return out
    return out[mask.to(device=out.device) != 0]


def collect_outputs(model: nn.Module, layers: list[tuple[str, nn.Linear]], batches: Iterable[Any],
                    max_batches: int) -> dict[str, OutputStats]:
    """Output statistics of each layer over at most `max_batches` calibration batches; layers the
    calibration never reached (unused modules) come back with count 0."""
    stats = {name: OutputStats.empty(out_width(lin)) for name, lin in layers}
    mask: list[torch.Tensor | None] = [None]  # the current batch's attention_mask, if it has one
    handles = [lin.register_forward_hook(lambda _m, _i, out, s=stats[name]: s.update(real_positions(out, mask[0])))
               for name, lin in layers]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if i >= max_batches:
                    break
                inputs = Inputs.of(batch)
                mask[0] = inputs.kwargs.get("attention_mask")
                inputs.call(model)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    if all(s.count == 0 for s in stats.values()):
        raise PluginError(f"afm: the calibration data reached none of {list(stats)}; "
                          "afm needs ApplyContext.calibration to yield model inputs")
    return stats


class AfmLinear(FactoredLinear):
    """second(first(x)) = mu + U_k U_k^T (W x + b - mu)."""

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias of the product second @ first, for parents that read `.weight` and `.bias`."""
        b = self.second.bias
        if self.first.bias is not None:
            b = b + self.second.weight @ self.first.bias
        return b


def afm_linear(linear: nn.Linear, p: Principal, k: int) -> AfmLinear:
    """The rank-k AFM replacement of `linear` from its output statistics."""
    u = p.eigenvectors[:, :k]  # (d_out, k)
    w = linear.weight.detach().double().cpu()
    like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
    has_bias = linear.bias is not None
    first = skip_init(nn.Linear, linear.in_features, k, bias=has_bias, **like)
    second = skip_init(nn.Linear, k, linear.out_features, bias=True, **like)
    with torch.no_grad():
        first.weight.copy_(u.t() @ w)
        if has_bias:
            first.bias.copy_(u.t() @ linear.bias.detach().double().cpu())
        second.weight.copy_(u)
        second.bias.copy_(p.mean - u @ (u.t() @ p.mean))
    for q in (*first.parameters(), *second.parameters()):
        q.requires_grad_(linear.weight.requires_grad)
    return AfmLinear(first, second)


def afm_params(d_in: int, d_out: int, k: int, bias: bool) -> int:
    return k * (d_in + d_out) + (k if bias else 0) + d_out


class AfmMethod(Method):
    name = "afm"
    kind = "compress"
    knob = Knob("k", 1, None)
    params = {"skip_modules": SKIP_MODULES,
              "calibration_batches": Param(8, int, low=1, help="calibration batches (of 64 training inputs) read"),
              "skip_above_break_even": SKIP_ABOVE_BREAK_EVEN, "recover": RECOVER,
              "embeddings": Param(False, bool, help="also compress embedding tables (E' = (E - mu^T) U_k, U_k fused "
                                  "into the layer that reads them)")}
    targets = ("Linear",)
    identity_at_init = False
    description = "AFM: each Linear's outputs projected on their top-k principal directions from calibration data (mu + U U^T (y - mu)), as two Linears."

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        check_suffixes(h["skip_modules"], "auto", method="afm", hparam="skip_modules", allow_empty=True)
        cb = h["calibration_batches"]
        if isinstance(cb, bool) or not isinstance(cb, int) or cb < 1:
            raise PluginError(f"afm: calibration_batches must be an integer >= 1, got {cb!r}")
        for key in ("recover", "skip_above_break_even", "embeddings"):
            if not isinstance(h[key], bool):
                raise PluginError(f"afm: {key} must be true or false, got {h[key]!r}")
        self._cache: tuple[Any, tuple, dict[str, Principal]] | None = None
        self._table_cache: tuple[Any, tuple, dict[str, Principal]] | None = None

    def select(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        """(name, Linear) of every layer compressed, in registration order: all but the head."""
        chosen = body_linears(model, self.hparams["skip_modules"], self.name)
        if not chosen and not self.hparams["embeddings"]:
            raise PluginError("afm: no Linear left to compress once the head is skipped")
        return chosen

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        widths = [lin.out_features for _, lin in self.select(model)]
        if self.hparams["embeddings"]:
            widths += [t.embedding_dim for _, t in check_tables(model, self.name)]
        return 1, max(widths)

    def layer_k(self, linear: nn.Linear, k: int) -> int | None:
        """The k this layer is compressed at, or None when it stays dense."""
        d_in, d_out, bias = linear.in_features, linear.out_features, linear.bias is not None
        k = min(k, d_out)
        dense = d_in * d_out + (d_out if bias else 0)
        if self.hparams["skip_above_break_even"] and afm_params(d_in, d_out, k, bias) >= dense:
            return None
        return k

    def statistics(self, model: nn.Module, layers: list[tuple[str, nn.Linear]], ctx: ApplyContext) -> dict[str, Principal]:
        """Per-layer principal directions, computed once per model and weight versions."""
        key = tuple((name, id(lin.weight), lin.weight._version,
                     None if lin.bias is None else lin.bias._version) for name, lin in layers)
        if self._cache is not None and self._cache[0]() is model and self._cache[1] == key:
            return self._cache[2]
        stats = collect_outputs(model, layers, ctx.calibration(), int(self.hparams["calibration_batches"]))
        result = {name: principal(s) for name, s in stats.items() if s.count > 0}  # unreached: stay dense
        self._cache = (weakref.ref(model), key, result)
        return result

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        k = as_rank(size, self.name)
        layers = self.select(model)
        chosen = [(n, lin, self.layer_k(lin, k)) for n, lin in layers]
        skips = tied_linears(model)
        picked = {n for n, _ in layers}
        skips.update({n: "left dense by skip_modules (the head)" for n, _ in find_layers(model, (nn.Linear,))
                      if n not in picked and n not in skips})
        skips.update({n: f"k {min(k, lin.out_features)} at or above break-even: the AFM form would be no smaller "
                      "than the dense layer, so it stays dense" for n, lin, kk in chosen if kk is None})
        factors = self.table_factors(model, k, ctx)  # {} unless embeddings = true
        if all(kk is None for _, _, kk in chosen) and not factors:
            return record_skips(copy_swapping(model, []), skips)
        tables, fused = table_swaps(model, factors)  # fused: the consumer Linear reading codes
        stats = self.statistics(model, layers, ctx) if any(kk is not None for _, _, kk in chosen) else {}
        skips.update({n: "the calibration data never reached it (an unused module)" for n, _, kk in chosen
                      if kk is not None and n not in stats})
        swaps = [(lin, afm_linear(fused.get(n, lin), stats[n], kk)) for n, lin, kk in chosen
                 if kk is not None and n in stats]
        done = {n for n, _, kk in chosen if kk is not None and n in stats}
        swaps += [(model.get_submodule(n), lin) for n, lin in fused.items() if n not in done]
        return record_skips(copy_swapping(model, swaps + tables), skips)

    # ---- embedding tables (embeddings = true) ---------------------------------------------
    def table_k(self, table: nn.Embedding, k: int, folded: bool) -> int | None:
        """The k this table is compressed at, or None when it stays dense."""
        v, d = table.num_embeddings, table.embedding_dim
        k = min(k, d)
        if self.hparams["skip_above_break_even"]:
            own = v * k if folded else v * k + d * k + d
            if (folded and k >= d) or own >= v * d:
                return None
        return k

    def table_factors(self, model: nn.Module, k: int, ctx: ApplyContext) -> dict[str, TableFactor]:
        """E' = (E - mu^T) U_k per compressed table, from its looked-up vectors' statistics."""
        if not self.hparams["embeddings"]:
            return {}
        tables = check_tables(model, self.name)
        folded = fusable(model, [n for n, _ in tables])
        chosen = [(n, t, self.table_k(t, k, folded)) for n, t in tables]
        chosen = [(n, t, kk) for n, t, kk in chosen if kk is not None]
        if not chosen:
            return {}
        key = tuple((n, id(t.weight), t.weight._version) for n, t, _ in chosen)
        if self._table_cache is not None and self._table_cache[0]() is model and self._table_cache[1] == key:
            stats = self._table_cache[2]
        else:
            raw = collect_outputs(model, [(n, t) for n, t, _ in chosen], ctx.calibration(),
                                  int(self.hparams["calibration_batches"]))
            stats = {n: principal(s) for n, s in raw.items()}
            self._table_cache = (weakref.ref(model), key, stats)
        out = {}
        for n, t, kk in chosen:
            u = stats[n].eigenvectors[:, :kk]
            out[n] = TableFactor((t.weight.detach().double().cpu() - stats[n].mean) @ u, u, stats[n].mean)
        return out


@hookimpl
def register_methods(register) -> None:
    register(AfmMethod)
