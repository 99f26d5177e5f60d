"""Penultimate features for `Task.features`: what the classifier receives, read by a hook.

The features are the input of the module named `head` (the tasks' models all name their output
layer so). A method's wrapper sits at the same name (LoRA's layer, GCR's head), so the hook reads
the same point of every model, whatever replaced the head. A model without such a module is an
error that names the modules it has.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lowdim_bench.api import PluginError


def head_module(model: nn.Module, name: str = "head") -> nn.Module:
    """The module whose last name part is `name` (the outermost one, if several)."""
    hits = [(n, m) for n, m in model.named_modules() if n == name or n.endswith("." + name)]
    if not hits:
        raise PluginError(f"no module named {name!r} to read features from; have "
                          f"{[n for n, _ in model.named_modules() if n][:20]}")
    return min(hits, key=lambda nm: nm[0].count("."))[1]


def head_inputs(model: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """Everything the head received while `run()` called the model, concatenated over calls
    along the first dimension, detached, on the CPU, in float32; eval mode, no gradients."""
    seen: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach().float().cpu())

    handle = head_module(model).register_forward_pre_hook(grab)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
        model.train(was_training)
    if not seen:
        raise PluginError("the model never called its head")
    return torch.cat(seen)
