"""Dense reference: an equal, independent copy with every parameter trainable."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.registry import Registry
from lowdim_bench_builtin.methods import dense as dense_module
from lowdim_bench_builtin.methods.dense import DenseMethod


def ctx() -> ApplyContext:
    return ApplyContext(seed=0, device=torch.device("cpu"), task=None)  # type: ignore[arg-type]


def model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    m[0].weight.requires_grad_(False)  # e.g. a frozen pretrained part
    return m


def test_registers_under_every_reference_kind() -> None:
    reg = Registry.from_objects({"dense": dense_module})
    assert reg.method("dense").cls is DenseMethod
    assert set(DenseMethod.supported_kinds()) == {"train", "adapt", "compress", "merge"}
    assert DenseMethod.knob is None
    with pytest.raises(PluginError):
        DenseMethod().knob_range(model())


def test_apply_copies_and_makes_everything_trainable() -> None:
    base = model()
    x = torch.randn(5, 12)
    new = DenseMethod().apply(base, None, ctx())
    assert new is not base
    assert torch.equal(new(x), base(x))
    assert all(p.requires_grad for p in new.parameters())
    n = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in new.parameters() if p.requires_grad) == n == 12 * 16 + 16 + 16 * 4 + 4
    with FlopCounterMode(display=False) as fc:
        new(x)
    assert fc.get_total_flops() == 2 * 5 * (12 * 16 + 16 * 4)


def test_apply_never_touches_the_base() -> None:
    base = model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    new = DenseMethod().apply(base, None, ctx())
    with torch.no_grad():
        for p in new.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert base[0].weight.requires_grad is False and base[2].weight.requires_grad is True


def test_rejects_a_size() -> None:
    with pytest.raises(PluginError, match="no size knob"):
        DenseMethod().apply(model(), 4, ctx())
    with pytest.raises(PluginError, match="unknown hyper-parameter"):
        DenseMethod(rank=3)
