"""Template of a `merge` method: task arithmetic over the members of a task family."""
from __future__ import annotations

CODE = '''"""$method_name: task arithmetic (Ilharco et al. 2023), the scaffold's merge example.

theta = theta_0 + lambda * sum_t (theta_t - theta_0) over the family's members theta_t (each
fine-tuned from the base theta_0), lambda the knob ("scaling"; a merge cell's budget is its knob).
With `mean` the sum is divided by the number of members (lambda = 1: plain weight averaging).
Every parameter is merged; buffers keep the base's values. The task scores the result per
member (`Task.member_view`, e.g. with that member's own head).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError


class ${cls}Merge(Method):
    name = "$method_name"
    kind = "merge"
    knob = Knob("scaling", 0.05, 1.0, integer=False, help="lambda, the scale of the summed task vectors")
    params = {"mean": Param(False, bool, help="divide the sum of task vectors by the number of members")}
    targets = ("Module",)
    description = "Task arithmetic: theta_0 + lambda * sum of the members' task vectors (theta_t - theta_0)."

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if not ctx.members:
            raise PluginError(f"{self.name}: a merge needs the family's members (ctx.members); run it as a merge "
                              "cell on a task whose members() is not empty")
        if size is None:
            raise PluginError(f"{self.name}: the scaling coefficient (knob) is required")
        scale = float(size) / (len(ctx.members) if self.hparams["mean"] else 1)
        members = {name: dict(m.named_parameters()) for name, m in ctx.members.items()}  # read-only
        merged = copy.deepcopy(model)  # `model` (the base) is never touched
        with torch.no_grad():
            for pname, p in merged.named_parameters():
                missing = [m for m, params in members.items() if pname not in params]
                if missing:
                    raise PluginError(f"{self.name}: members {missing} have no parameter {pname!r} of the base")
                tau = sum(params[pname].detach().to(p.dtype) - p for params in members.values())
                p.add_(scale * tau)
        return merged
'''

TEST = '''"""The conformance kit on $method_name (one test per check), the merge formula and its settings."""
import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.testing import METHOD_CHECKS

from $module.merge import ${cls}Merge
$task_import
TASK = $task


@pytest.mark.parametrize("check", list(METHOD_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.method(${cls}Merge, TASK, checks=[check])


def test_scaling_one_with_mean_is_the_average_of_the_members():
    torch.manual_seed(0)
    base, a, b = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=None, kind="merge", members={"a": a, "b": b})
    merged = ${cls}Merge(mean=True).apply(base, 1.0, ctx)
    torch.testing.assert_close(merged.weight, (a.weight + b.weight) / 2)
    summed = ${cls}Merge().apply(base, 0.5, ctx)  # theta_0 + 0.5 (tau_a + tau_b)
    torch.testing.assert_close(summed.weight, base.weight + 0.5 * (a.weight + b.weight - 2 * base.weight))


def test_refuses_to_run_without_members_and_bad_settings():
    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=None)
    with pytest.raises(PluginError, match="members"):
        ${cls}Merge().apply(nn.Linear(2, 2), 0.5, ctx)
    with pytest.raises(PluginError, match="mean"):
        ${cls}Merge(mean=1)
'''
