"""The example plugin's own tests: the conformance kit, one test per check, and DoRA's formulas."""
import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.testing import METHOD_CHECKS

from lowdim_bench_dora import DoraLinear, DoraMethod


@pytest.mark.parametrize("check", list(METHOD_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.method(DoraMethod, checks=[check])


def test_trainable_count_is_the_formula():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=None)
    adapted = DoraMethod().apply(model, 3, ctx)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable == 3 * (20 + 30) + 30 + 3 * (30 + 5) + 5


def test_typed_settings_refuse_wrong_values():
    with pytest.raises(PluginError, match="alpha"):
        DoraMethod(alpha=0.0)
    with pytest.raises(PluginError, match="merged_inference"):
        DoraMethod(merged_inference="yes")
