"""DoRA (Liu et al. 2024): weight-decomposed low-rank adaptation.

The pretrained W0 (d_out, d_in) is split into a magnitude m (one per output row) and a
direction; the direction gets a LoRA update and is renormalised:

    W' = m * (W0 + s B A) / ||W0 + s B A||_row,   s = alpha / r,

so y = (m / n) (W0 x + s B (A x)) + b with n the row norms. Init: A Kaiming-uniform(a=sqrt 5),
B = 0, m = ||W0||_row, so W' = W0 at step 0. Trainable per Linear: r (d_in + d_out) + d_out.

Choices (also in docs/plugins.md):
- "Row" norm: over d_in for each output unit, as the paper's ||.||_c of a (d_in, d_out)
  matrix and PEFT's implementation of nn.Linear (norm over dim 1 of the (d_out, d_in) weight).
- `detach_norm` (default True): n is treated as a constant in backward, the paper's section
  4.3 memory saving, also PEFT's default; False gives the exact gradient.
- alpha defaults to 8 (PEFT's default), every nn.Linear is adapted unless `target_modules`
  names some (suffixes of module names, as the built-in lora), and with `merged_inference`
  (default False, as lora) for_inference folds W' into a plain Linear.
- Hyper-parameters are typed `params` (lowdim_bench.layers' shared declarations where they fit),
  so a suite value of the wrong type or range fails before any cell runs, naming it.
- Randomness comes from a generator seeded with ctx.seed only.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.layers import (ALPHA, MERGED_INFERENCE, TARGET_MODULES, as_rank, check_suffixes, find_layers,
                                 max_rank, replace_module, split_by_suffixes)


class DoraLinear(nn.Module):
    """A frozen nn.Linear (`base`) with a trainable magnitude and low-rank direction update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, detach_norm: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.detach_norm = detach_norm
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(**like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        self.magnitude = nn.Parameter(base.weight.detach().norm(dim=1).clone())

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def weight_norm(self) -> torch.Tensor:
        """Row norms of W0 + s B A (a constant in backward when detach_norm)."""
        norm = (self.base.weight + self.delta_weight()).norm(dim=1)
        return norm.detach() if self.detach_norm else norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.magnitude / self.weight_norm()
        direction = F.linear(x, self.base.weight) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        y = direction * scale
        return y if self.base.bias is None else y + self.base.bias

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain Linear computing the same function: W' = m (W0 + s B A) / n."""
        w = self.base.weight.double() + self.delta_weight().double()
        w = w * (self.magnitude.double() / w.norm(dim=1))[:, None]
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=w.device, dtype=self.base.weight.dtype)
        out.weight.copy_(w.to(out.weight.dtype))
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        out.requires_grad_(False)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, detach_norm={self.detach_norm}"


def merge_dora(model: nn.Module) -> int:
    """Replace every DoraLinear in `model` by its merged Linear, in place; returns how many."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, DoraLinear)]
    for name, layer in found:
        model = replace_module(model, name, layer.merged())
    return len(found)


class DoraMethod(Method):
    name = "dora"
    kind = "adapt"
    knob = Knob("rank", 1, None)
    params = {
        "alpha": ALPHA,
        "detach_norm": Param(True, bool, help="treat the row norm as a constant in backward (the paper's 4.3 memory "
                             "saving, PEFT's default); false: the exact gradient"),
        "merged_inference": MERGED_INFERENCE,
        "target_modules": TARGET_MODULES,
    }
    targets = ("Linear",)
    identity_at_init = True
    description = "DoRA: W' = m (W0 + s B A) / ||W0 + s B A||_row; magnitude m and LoRA direction trained, W0 frozen."

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)  # typed: alpha > 0, booleans only true/false, ... (see `params`)
        check_suffixes(self.hparams["target_modules"], "all", method="dora", hparam="target_modules")

    def select(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        found = [(n, m) for n, m in find_layers(model, (nn.Linear,)) if type(m) is nn.Linear]
        if not found:
            raise PluginError("dora: the model has no nn.Linear to adapt")
        if self.hparams["target_modules"] == "all":
            return found
        chosen, _ = split_by_suffixes(found, self.hparams["target_modules"], method="dora", hparam="target_modules",
                                      what="Linear")
        return chosen

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(max_rank(m) for _, m in self.select(model))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, "dora")
        new = copy.deepcopy(model)
        new.requires_grad_(False)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        h = self.hparams
        for name, linear in self.select(new):
            new = replace_module(new, name, DoraLinear(linear, rank, float(h["alpha"]), h["detach_norm"], gen))
        return new

    def for_inference(self, model: nn.Module) -> nn.Module:
        if self.hparams["merged_inference"]:
            merge_dora(model)
        return model
