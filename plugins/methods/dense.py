"""The dense reference: the model as it is, every parameter trainable.

It runs under every kind the comparison needs a reference for: full training (train), full
fine-tuning (adapt), the uncompressed model (compress, where the harness does not train it) and
the unmerged base (merge: scored on each member through the task's member_view, e.g. the base
body with that member's fine-tuned head).
"""
from __future__ import annotations

import copy

from torch import nn

from lowdim_bench.api import ApplyContext, Method, PluginError
from lowdim_bench.hookspecs import hookimpl


class DenseMethod(Method):
    name = "dense"
    kind = "train"
    kinds = ("train", "adapt", "compress", "merge")  # under merge: the base itself, no task vector added
    knob = None
    reference = True  # suites compare the other entries against it unless they name a `reference`
    defaults: dict = {}
    targets = ("Module",)  # the whole model, every parameter
    identity_at_init = True
    description = "Reference: the unchanged model with every parameter trainable (full training / full fine-tuning / uncompressed)."

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if size is not None:
            raise PluginError(f"method 'dense' has no size knob; got size={size!r}")
        new = copy.deepcopy(model)
        for p in new.parameters():
            if p.is_floating_point() or p.is_complex():
                p.requires_grad_(True)
        return new


@hookimpl
def register_methods(register) -> None:
    register(DenseMethod)
