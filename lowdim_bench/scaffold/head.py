"""Template of a `head` method: a cosine classifier replacing the model's last Linear."""
from __future__ import annotations

CODE = '''"""$method_name: a cosine classifier head (the scaffold's head example; make it your method).

The last nn.Linear is replaced by logits = s cos(x, w_c): rows w_c start as the old head's
weights, the scale s starts at `scale` and is learnt when `learn_scale`; the body is frozen.
Trainable: the head's weight (+ 1 for s).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Method, Param, PluginError
from lowdim_bench.layers import find_layers, swap_layers


class CosineHead(nn.Module):
    def __init__(self, old: nn.Linear, scale: float, learn_scale: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(old.weight.detach().clone())
        s = torch.tensor(float(scale), dtype=old.weight.dtype, device=old.weight.device)
        self.scale = nn.Parameter(s, requires_grad=learn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


class ${cls}Head(Method):
    name = "$method_name"
    kind = "head"
    params = {"scale": Param(10.0, float, low=1e-3, high=1e3, help="initial scale s of the cosine logits"),
              "learn_scale": Param(True, bool, help="train s with the head")}
    targets = ("Linear",)
    description = "Cosine classifier: the last Linear as s cos(x, w_c), body frozen."

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        found = find_layers(model, (nn.Linear,))
        if not found:
            raise PluginError(f"{self.name}: the model has no nn.Linear classifier")
        h = self.hparams
        new = swap_layers(model, [found[-1][0]], lambda name, old: CosineHead(old, h["scale"], h["learn_scale"]))
        for m in new.modules():  # the body frozen; the new head keeps its own flags
            if not isinstance(m, CosineHead):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
        return new
'''

TEST = '''"""The conformance kit on $method_name (one test per check), its parameter count and its settings."""
import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.testing import METHOD_CHECKS

from $module.head import ${cls}Head
$task_import
TASK = $task


@pytest.mark.parametrize("check", list(METHOD_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.method(${cls}Head, TASK, checks=[check])


def test_trainable_is_the_head_weight_and_the_scale():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=None)
    assert sum(p.numel() for p in ${cls}Head().apply(model, None, ctx).parameters() if p.requires_grad) == 30 * 5 + 1
    fixed = ${cls}Head(learn_scale=False).apply(model, None, ctx)
    assert sum(p.numel() for p in fixed.parameters() if p.requires_grad) == 30 * 5


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(PluginError, match="scale"):
        ${cls}Head(scale=0.0)
    with pytest.raises(PluginError, match="learn_scale"):
        ${cls}Head(learn_scale="yes")
'''
