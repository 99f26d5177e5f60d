"""LoRA (Hu et al. 2021): a frozen base plus a trainable low-rank update.

y = W0 x + (alpha / r) B A dropout(x), with A Kaiming-uniform(a=sqrt 5) and B = 0 as in the
reference code (microsoft/LoRA, PEFT), so the adapted model equals the base at step 0.

Choices (also in the report and docs):
- alpha defaults to 8, PEFT's default (scale alpha/r = 1 at PEFT's r=8); the scale follows the
  rank the budget search picks, as in the paper.
- Every Linear and Conv2d is adapted by default, the classifier head included; all other base
  parameters (norms, embeddings, biases) are frozen.
- Conv2d (PEFT form): A is a conv C_in -> r with the base's kernel, stride, padding, dilation
  and padding mode; B a 1x1 conv r -> C_out. A grouped conv (groups g > 1) gets a rank-r update
  per group (A: C_in -> g r and B: g r -> C_out, both with groups=g), so the update has the base
  kernel's block structure and merges into it exactly; its parameter count r (C_in kh kw + C_out)
  is the same as the ungrouped formula.
- No rank clamping: one r for every adapted layer, as in the paper.
- Linears owned by nn.MultiheadAttention are skipped (it reads their weight directly).
- merge()/unmerge() are explicit; nothing merges on eval(). The update is formed in float64.
  With `merged_inference`, `for_inference` merges the adapters, so inference FLOPs and latency
  are the deployed (merged, dense-cost) model's; training-step figures stay unmerged.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init

from lowdim_bench.api import ApplyContext, Knob, Method, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import (ALPHA, DROPOUT, MERGED_INFERENCE, TARGET_MODULES, MergeableDelta, as_rank, check_suffixes,
                                 find_layers, merge_all, replace_module, split_by_suffixes, unmerge_all)


def _kaiming_(weight: torch.Tensor, generator: torch.Generator) -> None:
    """Kaiming-uniform(a=sqrt 5) drawn on CPU from `generator`, then copied to the weight's device."""
    cpu = torch.empty(weight.shape, dtype=torch.float32)
    nn.init.kaiming_uniform_(cpu, a=math.sqrt(5), generator=generator)
    with torch.no_grad():
        weight.copy_(cpu.to(device=weight.device, dtype=weight.dtype))


class LoraLayer(MergeableDelta):
    """A frozen nn.Linear or nn.Conv2d (`base`) plus a trainable low-rank update (`lora_A`, `lora_B`)."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float, generator: torch.Generator) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise PluginError(f"lora adapts nn.Linear and nn.Conv2d, not {type(base).__name__}")
        self.base = base
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.merged = False
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        if isinstance(base, nn.Linear):
            self.groups = 1
            self.lora_A = skip_init(nn.Linear, base.in_features, rank, bias=False, **like)
            self.lora_B = skip_init(nn.Linear, rank, base.out_features, bias=False, **like)
        else:
            g = self.groups = base.groups
            self.lora_A = skip_init(
                nn.Conv2d, base.in_channels, rank * g, base.kernel_size, stride=base.stride,
                padding=base.padding, dilation=base.dilation, groups=g, bias=False,
                padding_mode=base.padding_mode, **like)
            self.lora_B = skip_init(nn.Conv2d, rank * g, base.out_channels, 1, groups=g, bias=False, **like)
        _kaiming_(self.lora_A.weight, generator)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:  # the update is inside base.weight; A and B get no gradient while merged
            return y
        return y + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight W0 + (alpha/r) B A, for parents that read `.weight` directly
        (e.g. nn.TransformerEncoderLayer's fast path); differentiable in A and B."""
        if self.merged:
            return self.base.weight
        g, r = self.groups, self.rank
        a = self.lora_A.weight.reshape(g, r, -1)
        b = self.lora_B.weight.reshape(g, -1, r)
        return self.base.weight + (torch.bmm(b, a) * self.scaling).reshape(self.base.weight.shape)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta64(self) -> torch.Tensor:
        """The update (alpha/r) B A in the base weight's shape, in float64 (per group for convs)."""
        g, r = self.groups, self.rank
        a = self.lora_A.weight.detach().double().reshape(g, r, -1)
        b = self.lora_B.weight.detach().double().reshape(g, -1, r)
        return (torch.bmm(b, a) * self.scaling).reshape(self.base.weight.shape)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, groups={self.groups}, merged={self.merged}"


merge_lora = functools.partial(merge_all, kind=LoraLayer)
unmerge_lora = functools.partial(unmerge_all, kind=LoraLayer)


def full_rank(module: nn.Module) -> int:
    """The largest useful rank of a layer's update (per group for a grouped conv)."""
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    kh, kw = module.kernel_size
    g = module.groups
    return min(module.out_channels // g, module.in_channels // g * kh * kw)


class LoraMethod(Method):
    name = "lora"
    kind = "adapt"
    knob = Knob("rank", 1, None)
    params = {"alpha": ALPHA, "dropout": DROPOUT, "target_modules": TARGET_MODULES, "merged_inference": MERGED_INFERENCE}
    targets = ("Linear", "Conv2d")
    identity_at_init = True
    description = "LoRA: frozen base + (alpha/r) B A on every Linear/Conv2d (PEFT conv form); A Kaiming, B zero."

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        if not float(h["alpha"]) > 0:
            raise PluginError(f"lora: alpha must be > 0, got {h['alpha']!r}")
        if not 0.0 <= float(h["dropout"]) < 1.0:
            raise PluginError(f"lora: dropout must be in [0, 1), got {h['dropout']!r}")
        check_suffixes(h["target_modules"], "all", method="lora", hparam="target_modules")

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(name, module) of every layer this method adapts, in registration order."""
        tm = self.hparams["target_modules"]
        # A LoraLayer's base and factors are never adapted again (no LoRA on LoRA).
        found = find_layers(model, (nn.Linear, nn.Conv2d), owners=(nn.MultiheadAttention, LoraLayer))
        if tm != "all":
            found, _ = split_by_suffixes(found, tm, method="lora", hparam="target_modules", what="Linear/Conv2d")
        if not found:
            raise PluginError("lora: the model has no Linear or Conv2d layer to adapt")
        return found

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(full_rank(m) for _, m in self.select(model))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        new = copy.deepcopy(model)
        for p in new.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        h = self.hparams
        for name, module in self.select(new):
            layer = LoraLayer(module, rank, float(h["alpha"]), float(h["dropout"]), gen)
            new = replace_module(new, name, layer)
        return new

    def for_inference(self, model: nn.Module) -> nn.Module:
        if self.hparams["merged_inference"]:
            merge_lora(model)
        return model


@hookimpl
def register_methods(register) -> None:
    register(LoraMethod)
