"""Comparing what two models compute: flattened outputs and an elementwise tolerance."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import api


def outputs(model: nn.Module, inputs: api.Inputs | tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        out = api.Inputs.of(inputs).call(model.eval())
    flat: list[torch.Tensor] = []

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            flat.append(x.detach().float())
        elif isinstance(x, (tuple, list)):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk(out)
    return flat


def compare_outputs(a: list[torch.Tensor], b: list[torch.Tensor], atol: float, rtol: float) -> tuple[bool, str]:
    """(close, description) of two flattened outputs, elementwise |a - b| <= atol + rtol |b|."""
    if [t.shape for t in a] != [t.shape for t in b]:
        return False, f"output shapes differ: {[tuple(t.shape) for t in a]} vs {[tuple(t.shape) for t in b]}"
    worst, scale = 0.0, 0.0
    ok = True
    for x, y in zip(a, b):
        diff = (x - y).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        scale = max(scale, float(y.abs().max()) if y.numel() else 0.0)
        ok &= bool(torch.all(diff <= atol + rtol * y.abs())) and bool(torch.isfinite(x).all())
    return ok, f"max |difference| {worst:.3g} (outputs up to {scale:.3g})"
