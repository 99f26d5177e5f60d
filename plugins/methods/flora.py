"""FLoRA (Si et al. 2024, "Low-Rank Core Space for N-dimension"): a Tucker-form weight update.

dW = s * G x_1 U_1 x_2 U_2 ... x_N U_N, with G of shape (r_1..r_N) the core and U_n of shape
(I_n, r_n) the factors, over the weight's own N modes: Conv2d N=4 over (C_out, C_in/groups, kh,
kw), Linear N=2 over (d_out, d_in). Forward base(x) + conv(x, dW) with the base's stride,
padding, dilation, groups and padding mode (F.linear for a Linear), as the official code does.
Init as the official code (SJTU-DeepVisionLab/FLoRA): factors Kaiming-normal(a=sqrt 3) on
fan-in r_n (std 1/sqrt(2 r_n)), core G = 0, so the model is unchanged at step 0.
Trainable per layer: prod(r_n) + sum(I_n r_n).

Choices (also in the report and docs):
- The kernel's modes are the shape torch stores, (C_out, C_in/groups, kh, kw), so dW has the
  base kernel's shape and grouped and depthwise convs work (the official code builds a
  (C_out, C_in, kh, kw) kernel and crashes on them) and dW merges into the base weight.
- The knob `rank` r is the rank of the channel modes (both modes of a Linear); the kernel modes
  get `kernel_rank` (default 2), i.e. r = [r, r, 2, 2], the official ConvNeXt example's ratio at
  r = 16. Every r_n is clamped to its mode's size I_n (a larger Tucker rank only adds redundant
  parameters), so trainable counts grow monotonically with r for the budget search.
- scale s defaults to 4, the official ConvNeXt example's value (the layer's own default is 1).
- dW is built with explicit mode products (movedim + mm) in the fixed order n = 1..N, so its
  FLOPs do not depend on opt_einsum: sum_k 2 (prod_{m<=k} I_m)(prod_{m>=k} r_m), per call.
  Unmerged forward FLOPs: dense + dense (the update conv, no bias) + that contraction; merged:
  dense. No `ideal_flops` is declared: as for an unmerged LoRA, the paper's form is what runs.
- Every Linear and Conv2d is adapted by default (`target_modules`), the head included, as lora;
  other base parameters are frozen. Linears owned by nn.MultiheadAttention are skipped.
- merge()/unmerge() are explicit and form dW in float64; with `merged_inference`,
  `for_inference` merges. dropout (default 0; the official example uses 0.01) applies to the
  update branch's input.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import (DROPOUT, MERGED_INFERENCE, TARGET_MODULES, MergeableDelta, as_rank, check_suffixes,
                                 find_layers, merge_all, replace_module, split_by_suffixes, unmerge_all)


def mode_product(t: torch.Tensor, factor: torch.Tensor, mode: int) -> torch.Tensor:
    """t x_mode factor: mode `mode` of t (size r) becomes size I via factor (I, r); one mm."""
    moved = t.movedim(mode, 0)
    rest = moved.shape[1:]
    out = torch.mm(factor, moved.reshape(moved.shape[0], -1))
    return out.reshape(factor.shape[0], *rest).movedim(0, mode)


def tucker_to_tensor(core: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """G x_1 U_1 ... x_N U_N, expanding modes in the order 1..N."""
    t = core
    for n, u in enumerate(factors):
        t = mode_product(t, u, n)
    return t


def contraction_flops(dims: Sequence[int], ranks: Sequence[int]) -> int:
    """FLOPs of `tucker_to_tensor`: step k costs 2 (prod_{m<=k} I_m)(prod_{m>=k} r_m)."""
    total = 0
    for k in range(len(dims)):
        total += 2 * math.prod(dims[:k + 1]) * math.prod(ranks[k:])
    return total


def layer_ranks(module: nn.Module, rank: int, kernel_rank: int) -> tuple[int, ...]:
    """The Tucker ranks of a layer: r on the channel modes, kernel_rank on the kernel modes, clamped."""
    dims = tuple(module.weight.shape)
    wanted = (rank, rank) + (kernel_rank,) * (len(dims) - 2)
    return tuple(min(r, i) for r, i in zip(wanted, dims))


class FloraLayer(MergeableDelta):
    """A frozen nn.Linear or nn.Conv2d (`base`) plus a Tucker-form update of its whole weight."""

    def __init__(self, base: nn.Module, ranks: Sequence[int], scale: float, dropout: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise PluginError(f"flora adapts nn.Linear and nn.Conv2d, not {type(base).__name__}")
        dims = tuple(base.weight.shape)
        if len(ranks) != len(dims) or any(int(r) < 1 for r in ranks):
            raise PluginError(f"flora: ranks {list(ranks)} do not fit a weight of shape {list(dims)}")
        self.base = base
        self.dims = dims
        self.ranks = tuple(int(r) for r in ranks)
        self.scale = float(scale)
        self.merged = False
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.core = nn.Parameter(torch.zeros(self.ranks, **like))
        factors = []
        for i, r in zip(dims, self.ranks):
            cpu = torch.empty(i, r)
            nn.init.kaiming_normal_(cpu, a=math.sqrt(3), generator=generator)  # fan_in = r: std 1/sqrt(2r)
            factors.append(nn.Parameter(cpu.to(**like)))
        self.factors = nn.ParameterList(factors)

    def delta_weight(self) -> torch.Tensor:
        """s * G x_1 U_1 ... x_N U_N in the base weight's shape, differentiable."""
        return self.scale * tucker_to_tensor(self.core, list(self.factors))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:  # dW is inside base.weight; core and factors get no gradient while merged
            return y
        dw = self.delta_weight().to(x.dtype)
        if isinstance(self.base, nn.Linear):
            return y + F.linear(self.dropout(x), dw)
        return y + self.base._conv_forward(self.dropout(x), dw, None)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight W0 + dW, for parents that read `.weight` directly."""
        return self.base.weight if self.merged else self.base.weight + self.delta_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta64(self) -> torch.Tensor:
        return self.scale * tucker_to_tensor(self.core.detach().double(), [u.detach().double() for u in self.factors])

    def extra_repr(self) -> str:
        return f"dims={list(self.dims)}, ranks={list(self.ranks)}, scale={self.scale}, merged={self.merged}"


merge_flora = functools.partial(merge_all, kind=FloraLayer)
unmerge_flora = functools.partial(unmerge_all, kind=FloraLayer)


class FloraMethod(Method):
    name = "flora"
    kind = "adapt"
    knob = Knob("rank", 1, None)
    params = {"kernel_rank": Param(2, int, low=1, help="Tucker rank of each kernel mode (kh, kw) of a Conv2d"),
              "scale": Param(4.0, float, low=1e-12, help="s in dW = s G x1 U1 ... (official ConvNeXt example: 4)"),
              "dropout": DROPOUT, "target_modules": TARGET_MODULES, "merged_inference": MERGED_INFERENCE}
    targets = ("Linear", "Conv2d")
    identity_at_init = True
    description = ("FLoRA: frozen base + s * Tucker(G; U_1..U_N) over the weight's own modes (Conv2d N=4 incl. "
                   "grouped/depthwise, Linear N=2); ranks [r, r, kernel_rank, kernel_rank]; G zero, factors Kaiming.")

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        kr = h["kernel_rank"]
        if isinstance(kr, bool) or not isinstance(kr, int) or kr < 1:
            raise PluginError(f"flora: kernel_rank must be an integer >= 1, got {kr!r}")
        if not float(h["scale"]) > 0:
            raise PluginError(f"flora: scale must be > 0, got {h['scale']!r}")
        if not 0.0 <= float(h["dropout"]) < 1.0:
            raise PluginError(f"flora: dropout must be in [0, 1), got {h['dropout']!r}")
        check_suffixes(h["target_modules"], "all", method="flora", hparam="target_modules")
        if not isinstance(h["merged_inference"], bool):
            raise PluginError(f"flora: merged_inference must be true or false, got {h['merged_inference']!r}")

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        tm = self.hparams["target_modules"]
        found = find_layers(model, (nn.Linear, nn.Conv2d), owners=(nn.MultiheadAttention, FloraLayer))
        if tm != "all":
            found, _ = split_by_suffixes(found, tm, method="flora", hparam="target_modules", what="Linear/Conv2d")
        if not found:
            raise PluginError("flora: the model has no Linear or Conv2d layer to adapt")
        return found

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        """Up to the largest channel mode: beyond it no layer's ranks change."""
        return 1, max(max(m.weight.shape[:2]) for _, m in self.select(model))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        new = copy.deepcopy(model)
        for p in new.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        h = self.hparams
        for name, module in self.select(new):
            ranks = layer_ranks(module, rank, int(h["kernel_rank"]))
            layer = FloraLayer(module, ranks, float(h["scale"]), float(h["dropout"]), gen)
            new = replace_module(new, name, layer)
        return new

    def for_inference(self, model: nn.Module) -> nn.Module:
        if self.hparams["merged_inference"]:
            merge_flora(model)
        return model


@hookimpl
def register_methods(register) -> None:
    register(FloraMethod)
