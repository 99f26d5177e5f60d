"""A forward call's inputs, positional and keyword, and moving nested batches between devices.

Why a type of its own: the harness calls models it did not build (a Hugging Face encoder takes
`input_ids=..., attention_mask=...`), so FLOPs, latency, memory and calibration all take an
Inputs and call `inputs.call(model)`. Re-exported by lowdim_bench.api.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Inputs:
    """One forward call's inputs: positional and keyword (a Hugging Face model takes
    `input_ids=..., attention_mask=...`). `Inputs.of` accepts what tasks return: a tensor, a
    tuple of positional inputs, a dict of keyword inputs, or an Inputs."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, x: Any) -> "Inputs":
        if isinstance(x, Inputs):
            return x
        if isinstance(x, Mapping):
            return cls((), dict(x))
        if isinstance(x, (tuple, list)):
            return cls(tuple(x), {})
        return cls((x,), {})

    def call(self, model: Callable[..., Any]) -> Any:
        return model(*self.args, **self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (*self.args, *self.kwargs.values()) if isinstance(t, torch.Tensor)]


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Tensors inside tensors, tuples, lists, dicts and Inputs moved to `device`; the rest as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Inputs):
        return Inputs(to_device(obj.args, device), to_device(obj.kwargs, device))
    if isinstance(obj, Mapping):
        return type(obj)({k: to_device(v, device) for k, v in obj.items()}) if type(obj) is not dict else \
            {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(b, device) for b in obj)
    return obj
