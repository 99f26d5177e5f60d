"""Template of an `adapt` method: a LoRA-style low-rank adapter built from lowdim_bench.layers.

Placeholders: $method_name (registered name), $cls (class-name stem), $module, $task_import and
$task (what the tests run it on).
"""
from __future__ import annotations

CODE = '''"""$method_name: a low-rank adapter (the scaffold's adapt example; make it your method).

y = W0 x + (alpha / r) B A x on each targeted nn.Linear; W0 and every other base parameter
frozen; A Kaiming-uniform(a=sqrt 5), B = 0, so the adapted model equals the base at step 0
(identity_at_init). Trainable per adapted Linear: r (d_in + d_out). A layer too small for the
rank gets its largest rank, min(d_in, d_out). With merged_inference the deployed model folds
(alpha / r) B A into W0 (dense cost); training-step figures stay unmerged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, PluginError
from lowdim_bench.layers import (ALPHA, MERGED_INFERENCE, TARGET_MODULES, MergeableDelta, as_rank, check_suffixes,
                                 find_layers, max_rank, merge_all, split_by_suffixes, swap_layers)


class LowRankAdapter(MergeableDelta):
    """A frozen Linear `base` plus (alpha / r) B A; merge() folds the update into base.weight."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base, self.merged, self.scale = base.requires_grad_(False), False, alpha / rank
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.A = nn.Parameter(a.to(**like))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, **like))

    def delta64(self) -> torch.Tensor:
        return (self.B.detach().double() @ self.A.detach().double()) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scale


class ${cls}Adapt(Method):
    name = "$method_name"
    kind = "adapt"
    knob = Knob("rank", 1, None, help="rank r of every adapter")
    params = {"alpha": ALPHA, "target_modules": TARGET_MODULES, "merged_inference": MERGED_INFERENCE}
    targets = ("Linear",)
    identity_at_init = True
    description = "Low-rank adapter y = W0 x + (alpha/r) B A x on each Linear; W0 frozen, B = 0 at start."

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)  # every value checked against `params` (type, range)
        check_suffixes(self.hparams["target_modules"], "all", method=self.name, hparam="target_modules")

    def layers(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        found = find_layers(model, (nn.Linear,))
        if not found:
            raise PluginError(f"{self.name}: the model has no nn.Linear to adapt")
        if self.hparams["target_modules"] == "all":
            return found
        chosen, _ = split_by_suffixes(found, self.hparams["target_modules"], method=self.name,
                                      hparam="target_modules", what="Linear")
        return chosen

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(max_rank(layer) for _, layer in self.layers(model))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        gen = torch.Generator().manual_seed(int(ctx.seed))  # ctx.seed only: not the global RNG
        alpha = float(self.hparams["alpha"])
        new = swap_layers(model, [n for n, _ in self.layers(model)],  # a copy: `model` is never touched
                          lambda name, layer: LowRankAdapter(layer, min(rank, max_rank(layer)), alpha, gen))
        new.requires_grad_(False)  # adapt: every base parameter frozen, only the adapters train
        for m in new.modules():
            if isinstance(m, LowRankAdapter):
                m.A.requires_grad_(True)
                m.B.requires_grad_(True)
        return new

    def for_inference(self, model: nn.Module) -> nn.Module:
        if self.hparams["merged_inference"]:
            merge_all(model, LowRankAdapter)
        return model
'''

TEST = '''"""The conformance kit on $method_name (one test per check), its parameter formula and its settings."""
import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.testing import METHOD_CHECKS

from $module.adapt import ${cls}Adapt
$task_import
TASK = $task


@pytest.mark.parametrize("check", list(METHOD_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.method(${cls}Adapt, TASK, checks=[check])


def test_trainable_parameters_are_r_times_din_plus_dout():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=None)
    adapted = ${cls}Adapt().apply(model, 3, ctx)
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == 3 * (20 + 30) + 3 * (30 + 5)


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(PluginError, match="alpha"):
        ${cls}Adapt(alpha=-1.0)
    with pytest.raises(PluginError, match="merged_inference"):
        ${cls}Adapt(merged_inference="yes")
    with pytest.raises(PluginError, match="target_modules"):
        ${cls}Adapt(target_modules="attention")
'''
