"""Template of a `train` method: a low-rank parameterisation trained from scratch (body_linears)."""
from __future__ import annotations

CODE = '''"""$method_name: a low-rank parameterisation trained from scratch (the scaffold's train example).

Every nn.Linear of the body (not the head: see SKIP_MODULES) becomes U(V x) with V (r, d_in) and
U (d_out, r), freshly initialised like nn.Linear (Kaiming-uniform), r = min(rank, d_in, d_out):
r (d_in + d_out) + bias parameters per layer. The head stays dense.
"""
from __future__ import annotations

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, PluginError
from lowdim_bench.layers import SKIP_MODULES, as_rank, body_linears, check_suffixes, copy_swapping, max_rank


def low_rank(linear: nn.Linear, rank: int) -> nn.Sequential:
    """A fresh rank-`rank` factorisation in the layer's place (draws from the global RNG: the
    caller seeds it)."""
    new = nn.Sequential(nn.Linear(linear.in_features, rank, bias=False),
                        nn.Linear(rank, linear.out_features, bias=linear.bias is not None))
    return new.to(device=linear.weight.device, dtype=linear.weight.dtype)


class ${cls}Train(Method):
    name = "$method_name"
    kind = "train"
    knob = Knob("rank", 1, None, help="rank r of every factored Linear")
    params = {"skip_modules": SKIP_MODULES}
    targets = ("Linear",)
    description = "Each body Linear as U V of rank r, trained from scratch; the head dense."

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)  # every value checked against `params` (type, range)
        check_suffixes(self.hparams["skip_modules"], "auto", method=self.name, hparam="skip_modules",
                       allow_empty=True)

    def layers(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        found = body_linears(model, self.hparams["skip_modules"], self.name)
        if not found:
            raise PluginError(f"{self.name}: the model has no body nn.Linear to factor (the head stays dense)")
        return found

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(max_rank(layer) for _, layer in self.layers(model))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ctx.seed))  # the init depends on ctx.seed only
            swaps = [(linear, low_rank(linear, min(rank, max_rank(linear)))) for _, linear in self.layers(model)]
        return copy_swapping(model, swaps)  # a copy with the factors in place: `model` is never touched
'''

TEST = '''"""The conformance kit on $method_name (one test per check), its parameter formula and its settings."""
import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.testing import METHOD_CHECKS

from $module.train import ${cls}Train
$task_import
TASK = $task


@pytest.mark.parametrize("check", list(METHOD_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.method(${cls}Train, TASK, checks=[check])


def test_parameters_are_r_times_din_plus_dout_and_a_dense_head():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5))
    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=None)
    low = ${cls}Train().apply(model, 3, ctx)
    assert sum(p.numel() for p in low.parameters()) == (3 * 50 + 30) + (3 * 60 + 30) + (30 * 5 + 5)


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(PluginError, match="skip_modules"):
        ${cls}Train(skip_modules=3)
'''
