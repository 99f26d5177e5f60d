"""Methods that regress on purpose, for the regression-gate tests (tests/test_gate.py).

Loaded beside tests/fakeplugins.py (whose `tiny` task they run on) through
LOWDIM_BENCH_PLUGIN_MODULES=fakeplugins,gate_fixtures. A suite entry keeps its shown name while
its `method` switches from `gate-ok` (BASE) to `gate-slow` or `gate-degraded` (NEW), so the gate
compares the same row.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from lowdim_bench.api import Method
from lowdim_bench.hookspecs import hookimpl


class FineTune(Method):
    """Full fine-tuning, every parameter trained: the healthy method the others regress from."""

    name = "gate-ok"
    kind = "adapt"

    def apply(self, model, size, ctx):
        m = copy.deepcopy(model)
        for p in m.parameters():
            p.requires_grad_(True)
        return m


class Spin(nn.Module):
    """Runs the wrapped model, then busy-waits until `factor` x the forward's own time has passed:
    a kernel that got `factor` times slower, with the same parameters, FLOPs and outputs."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        y = self.inner(x)
        until = t0 + self.factor * (time.perf_counter() - t0)
        while time.perf_counter() < until:
            pass
        return y


class SlowFineTune(FineTune):
    """gate-ok whose every forward takes `factor` times as long."""

    name = "gate-slow"
    defaults = {"factor": 2.0}

    def apply(self, model, size, ctx):
        return Spin(super().apply(model, size, ctx), self.hparams["factor"])


class FrozenFineTune(FineTune):
    """gate-ok whose optimizer silently drops the learning rate (x `lr_scale`): the model stays at
    its source-stage base, so target quality falls; parameters, FLOPs and memory are unchanged."""

    name = "gate-degraded"
    defaults = {"lr_scale": 0.0}

    def configure_optimizer(self, model, lr, weight_decay):
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr * self.hparams["lr_scale"], weight_decay=weight_decay)


@hookimpl
def register_methods(register):
    for cls in (FineTune, SlowFineTune, FrozenFineTune):
        register(cls)
