"""GCR, Grassmann class representation (Wang et al. 2023, "Get the Best of Both Worlds").

Each class c is a k-dimensional subspace of the feature space, held as a d x k matrix W_c with
orthonormal columns (a point of the Grassmannian); its logit is the norm of the normalised
feature's projection onto it, gamma ||W_c^T x / ||x|| ||, with gamma = 25 and k = 8 in the
paper. The head is trained with Riemannian SGD along geodesics, re-orthonormalised by QR every
few steps, with no weight decay (_grassmann.py); the body keeps AdamW with the recipe's rate and
decay. Head parameters: C k d (no bias).

Choices (also in docs/plugins.md and the report):
- Kind `head`: the base is the task's source-pretrained model; the classifier (found as
  _heads.find_head says) is replaced by the GCR head, initialised as the Q factor of a seeded
  Gaussian per class, and the whole model fine-tunes on the target. The knob is k.
- The head's step size is `head_lr_ratio` x the recipe's learning rate, so an lr grid tunes both
  together and the schedule (warm-up, cosine) applies to both.
- `softmax-head` (softmax_head.py) is the reference: the same swap with a linear softmax head, at
  k = 1 the paper's baseline, at k > 1 one with k prototypes per class, about as many parameters.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import as_rank

from ._grassmann import GcrOptimizer, orthonormalise
from ._heads import check_head_module, find_head, swap_head


class GrassmannHead(nn.Module):
    """logits[..., c] = gamma || W_c^T x / ||x|| ||, W of shape (C, d, k), orthonormal columns."""

    def __init__(self, in_features: int, classes: int, k: int, gamma: float, generator: torch.Generator,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not 1 <= k <= in_features:
            raise PluginError(f"gcr: k must be in 1..{in_features} (the feature dimension), got {k}")
        self.in_features, self.classes, self.k, self.gamma = in_features, classes, k, float(gamma)
        w = orthonormalise(torch.randn(classes, in_features, k, generator=generator, dtype=torch.float64))
        self.bases = nn.Parameter(w.to(device=device, dtype=dtype or torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        proj = torch.einsum("...d,cdk->...ck", x, self.bases)
        return self.gamma * proj.norm(dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, classes={self.classes}, k={self.k}, gamma={self.gamma}"


class GcrMethod(Method):
    name = "gcr"
    kind = "head"
    knob = Knob("k", 1, None, help="dimension of each class subspace")
    params = {
        "gamma": Param(25.0, float, low=0, help="logit scale (the paper's 25)"),
        "head_lr_ratio": Param(1.0, float, low=0, help="head step size / the recipe's learning rate"),
        "momentum": Param(0.9, float, low=0, high=1, help="momentum of the Riemannian SGD"),
        "qr_every": Param(10, int, low=1, help="re-orthonormalise the bases by QR every this many steps"),
        "head_module": Param("auto", str, help="the classifier's name; 'auto' finds it (docs/plugins.md)"),
    }
    targets = ("Linear",)
    identity_at_init = False
    description = ("GCR: each class a k-dim subspace (orthonormal d x k), logit gamma ||W_c^T x/||x||||; "
                   "geodesic Riemannian SGD + QR on the head, AdamW on the body.")

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        if not h["gamma"] > 0:
            raise PluginError(f"gcr: gamma must be > 0, got {h['gamma']!r}")
        if not 0 <= h["momentum"] < 1:
            raise PluginError(f"gcr: momentum must be in [0, 1), got {h['momentum']!r}")
        check_head_module(h["head_module"], self.name)

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        _, head = find_head(model, self.hparams["head_module"], self.name)
        return 1, head.in_features

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        k = as_rank(size, self.name)
        name, head = find_head(model, self.hparams["head_module"], self.name)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        new_head = GrassmannHead(head.in_features, head.out_features, k, self.hparams["gamma"], gen,
                                 device=head.weight.device, dtype=head.weight.dtype)
        return swap_head(model, name, new_head)

    def configure_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        heads = [m for m in model.modules() if isinstance(m, GrassmannHead)]
        if not heads:
            raise PluginError("gcr: the model has no GrassmannHead (was it applied by gcr?)")
        grass = {id(m.bases) for m in heads}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in grass]
        groups: list[dict[str, Any]] = [{"params": [m.bases for m in heads if m.bases.requires_grad],
                                         "grassmann": True, "lr": lr * self.hparams["head_lr_ratio"]}]
        if body:
            groups.insert(0, {"params": body})
        return GcrOptimizer(groups, lr=lr, weight_decay=weight_decay, momentum=self.hparams["momentum"],
                            qr_every=self.hparams["qr_every"])


@hookimpl
def register_methods(register) -> None:
    register(GcrMethod)
