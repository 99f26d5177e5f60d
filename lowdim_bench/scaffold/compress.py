"""Template of a `compress` method: truncated SVD of each Linear, built from lowdim_bench.layers."""
from __future__ import annotations

CODE = '''"""$method_name: truncated-SVD compression (the scaffold's compress example; make it your method).

Each targeted nn.Linear W (d_out, d_in) becomes second(first(x)) with first = S_r^1/2 V_r^T and
second = U_r S_r^1/2 (+ the bias), r = min(rank, d_in, d_out): r (d_in + d_out) parameters, the
best rank-r approximation of W (Eckart-Young). With skip_above_break_even a layer whose factors
would not be smaller than W stays dense, so the count grows with the rank up to the dense count
and no further. With recover the harness fine-tunes the result (the task's recover recipe).
"""
from __future__ import annotations

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, PluginError
from lowdim_bench.layers import (RECOVER, SKIP_ABOVE_BREAK_EVEN, TARGET_MODULES, as_rank, check_suffixes,
                                 copy_swapping, find_layers, max_rank, split_by_suffixes)


def factor(linear: nn.Linear, rank: int) -> nn.Sequential:
    """Two Linears of rank `rank` whose product is the truncated SVD of linear.weight (float64 SVD)."""
    u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(linear.in_features, rank, bias=False)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root[None, :])
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second).to(device=linear.weight.device, dtype=linear.weight.dtype)


class ${cls}Compress(Method):
    name = "$method_name"
    kind = "compress"
    knob = Knob("rank", 1, None, help="rank r kept of every factored Linear")
    params = {"target_modules": TARGET_MODULES, "skip_above_break_even": SKIP_ABOVE_BREAK_EVEN, "recover": RECOVER}
    targets = ("Linear",)
    description = "Truncated SVD: each Linear as two of rank r (a layer where that is not smaller stays dense)."

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)  # every value checked against `params` (type, range)
        check_suffixes(self.hparams["target_modules"], "all", method=self.name, hparam="target_modules")

    def layers(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        found = find_layers(model, (nn.Linear,))
        if not found:
            raise PluginError(f"{self.name}: the model has no nn.Linear to factor")
        if self.hparams["target_modules"] == "all":
            return found
        chosen, _ = split_by_suffixes(found, self.hparams["target_modules"], method=self.name,
                                      hparam="target_modules", what="Linear")
        return chosen

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(max_rank(layer) for _, layer in self.layers(model))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        swaps = []
        for _, linear in self.layers(model):
            r = min(rank, max_rank(linear))
            d_out, d_in = linear.weight.shape
            if self.hparams["skip_above_break_even"] and r * (d_in + d_out) >= d_in * d_out:
                continue  # the factors would not be smaller: keep the layer dense
            swaps.append((linear, factor(linear, r)))
        return copy_swapping(model, swaps)  # a copy with the factors in place: `model` is never touched
'''

TEST = '''"""The conformance kit on $method_name (one test per check), its parameter formula and its settings."""
import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.testing import METHOD_CHECKS

from $module.compress import ${cls}Compress
$task_import
TASK = $task


@pytest.mark.parametrize("check", list(METHOD_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.method(${cls}Compress, TASK, checks=[check])


def test_stored_parameters_are_r_times_din_plus_dout_below_break_even():
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=None)
    compressed = ${cls}Compress().apply(model, 4, ctx)
    # both Linears are below break-even at rank 4 (4 x 70 < 40 x 30, 4 x 35 < 30 x 5): both factored
    assert sum(p.numel() for p in compressed.parameters()) == 4 * (40 + 30) + 30 + 4 * (30 + 5) + 5


def test_full_rank_reproduces_the_layer():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=None)
    full = ${cls}Compress(skip_above_break_even=False).apply(layer, 4, ctx)
    x = torch.randn(3, 6)
    torch.testing.assert_close(full(x), layer(x), atol=1e-5, rtol=1e-5)


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(PluginError, match="recover"):
        ${cls}Compress(recover=1)
    with pytest.raises(PluginError, match="target_modules"):
        ${cls}Compress(target_modules=[])
'''
