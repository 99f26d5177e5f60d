"""Which layers a method left as they were, and why, recorded on the model it returns.

Why: on a real model a method quietly keeps some layers dense (above the break-even rank, a
tied weight, a head, a module the calibration never reached), and a figure at "budget 0.9"
means little until one sees that every attention projection stayed dense. A method calls
`record_skips(new_model, {layer name: reason})`; the harness (or a test) reads `skipped(model)`.
"""
from __future__ import annotations

from torch import nn

from lowdim_bench.layers import find_layers, tied_params

ATTR = "lowdim_skipped"
TIED = "weight tied to another module (rewriting it would untie them)"


def record_skips(model: nn.Module, skips: dict[str, str]) -> nn.Module:
    """`model` with `skips` (layer name -> reason) recorded on it; returns the model."""
    object.__setattr__(model, ATTR, dict(skips))
    return model


def skipped(model: nn.Module) -> dict[str, str]:
    """What the method that built `model` left out, by layer name (empty when nothing)."""
    return dict(getattr(model, ATTR, {}))


def tied_linears(model: nn.Module) -> dict[str, str]:
    """Linears whose weight is tied to another module, with the reason they stay as they are."""
    tied = tied_params(model)
    return {n: TIED for n, m in find_layers(model, (nn.Linear,)) if id(m.weight) in tied}
