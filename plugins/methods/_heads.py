"""Shared pieces of the `head` methods (gcr, softmax-head): find the classifier, swap it.

How a head method finds the classifier (docs/plugins.md, "head methods"): with `head_module =
"auto"`, the nn.Linear whose last name part is in `lowdim_bench.layers.HEAD_NAMES` ("head",
"lm_head", "classifier", "out", "output"); when none is so named, the last nn.Linear registered
(the same rule `body_linears` uses to leave a head dense). Several named heads are ambiguous and
must be named with `head_module`. A Linear whose weight is tied to another module (an LM head
sharing the embedding) cannot be replaced without untying it, so it is refused.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from lowdim_bench.api import PluginError
from lowdim_bench.layers import HEAD_NAMES, find_layers, matches, replace_module, tied_params


def find_head(model: nn.Module, head_module: str, method: str) -> tuple[str, nn.Linear]:
    """(name, layer) of the classifier a head method replaces."""
    linears = find_layers(model, (nn.Linear,))
    if not linears:
        raise PluginError(f"{method}: the model has no nn.Linear classifier to replace")
    if head_module != "auto":
        hits = [(n, m) for n, m in linears if matches(n, head_module)]
        if len(hits) != 1:
            raise PluginError(f"{method}: head_module {head_module!r} matches {len(hits)} Linear layer(s); "
                              f"have {[n for n, _ in linears]}")
        name, layer = hits[0]
    else:
        named = [(n, m) for n, m in linears if n.rsplit(".", 1)[-1] in HEAD_NAMES]
        if len(named) > 1:
            raise PluginError(f"{method}: several layers look like the head ({[n for n, _ in named]}); "
                              f"name one with head_module")
        name, layer = named[0] if named else linears[-1]
    if id(layer.weight) in tied_params(model):
        raise PluginError(f"{method}: head {name!r} shares its weight with another module (tied); "
                          f"replacing it would untie it")
    return name, layer


def check_head_module(value: object, method: str) -> None:
    """Reject a bad `head_module` at construction, before any model is built."""
    if not isinstance(value, str) or not value.strip():
        raise PluginError(f"{method}: head_module must be 'auto' or a module name (suffix), got {value!r}")


def swap_head(model: nn.Module, name: str, new_head: nn.Module) -> nn.Module:
    """A deep copy of `model`, every parameter trainable (the body fine-tunes), `new_head` at `name`."""
    new = copy.deepcopy(model)
    for p in new.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
    return replace_module(new, name, new_head)


def linear_init_(weight: torch.Tensor, bias: torch.Tensor | None, generator: torch.Generator) -> None:
    """nn.Linear's default initialisation, drawn from `generator` (never the global RNG)."""
    cpu = torch.empty(weight.shape, dtype=torch.float32)
    nn.init.kaiming_uniform_(cpu, a=math.sqrt(5), generator=generator)
    with torch.no_grad():
        weight.copy_(cpu.to(weight.device, weight.dtype))
        if bias is not None:
            bound = 1 / math.sqrt(weight.shape[1]) if weight.shape[1] > 0 else 0.0
            b = torch.empty(bias.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
            bias.copy_(b.to(bias.device, bias.dtype))
