"""softmax-head: the classifier replaced by a fresh linear softmax head; GCR's reference.

The same swap as `gcr` (kind head: the source-pretrained base, its classifier found by
_heads.find_head, the whole model fine-tuned on the target with the harness's AdamW), so the two
differ only in the head. The knob k is prototypes per class: logit_c = logsumexp_j (w_cj . x +
b_cj). k = 1 is exactly a new nn.Linear(d, C), the paper's softmax baseline; k > 1 has C k (d + 1)
parameters, as many as GCR's C k d plus the biases, for a comparison at equal parameters.
Initialisation: nn.Linear's default, drawn from a generator seeded with the cell's seed.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import as_rank

from ._heads import check_head_module, find_head, linear_init_, swap_head


class PrototypeHead(nn.Module):
    """k linear prototypes per class, pooled by logsumexp (k = 1: a plain linear classifier)."""

    def __init__(self, in_features: int, classes: int, k: int, generator: torch.Generator,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.classes, self.k = in_features, classes, k
        self.linear = nn.Linear(in_features, classes * k, device=device, dtype=dtype)
        linear_init_(self.linear.weight, self.linear.bias, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.linear(x)
        if self.k == 1:
            return scores
        return scores.unflatten(-1, (self.classes, self.k)).logsumexp(dim=-1)


class SoftmaxHeadMethod(Method):
    name = "softmax-head"
    kind = "head"
    knob = Knob("k", 1, None, help="linear prototypes per class (1: the plain softmax head)")
    params = {"head_module": Param("auto", str, help="the classifier's name; 'auto' finds it (docs/plugins.md)")}
    targets = ("Linear",)
    identity_at_init = False
    description = ("Reference head: a fresh linear softmax classifier (k prototypes per class, logsumexp) "
                   "fine-tuned with the body.")

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        check_head_module(self.hparams["head_module"], self.name)

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        _, head = find_head(model, self.hparams["head_module"], self.name)
        return 1, head.in_features

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        k = as_rank(size, self.name)
        name, head = find_head(model, self.hparams["head_module"], self.name)
        if k > head.in_features:
            raise PluginError(f"softmax-head: k must be at most {head.in_features}, got {k}")
        gen = torch.Generator().manual_seed(int(ctx.seed))
        new_head = PrototypeHead(head.in_features, head.out_features, k, gen,
                                 device=head.weight.device, dtype=head.weight.dtype)
        return swap_head(model, name, new_head)


@hookimpl
def register_methods(register) -> None:
    register(SoftmaxHeadMethod)
