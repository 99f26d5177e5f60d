"""Intrinsic-dimension training (Li et al. 2018, "Measuring the intrinsic dimension of objective
landscapes"): theta = theta0 + P z, only z in R^d trained.

theta0 is the model the harness hands over: a fresh initialisation under kind `train` (Li's
setting, measuring a task's intrinsic dimension from scratch), the pretrained base under kind
`adapt` (Aghajanyan et al.'s fine-tuning setting). Every parameter tensor gets its slice of P z
(D = all parameter elements); buffers (e.g. norm statistics) are left as they are. z starts at
0, so the model equals theta0 exactly at step 0. P is one of the projections in _projections.py
(hparam `projection`: dense | sparse | fastfood), drawn from its own generator seeded with
ctx.seed + PROJECTION_SEED_OFFSET, apart from the stream a task seeds its initialisation with,
so a cell's P is reproducible.

The forward computes P z, adds each tensor's slice to its frozen theta0 and runs the base model
through torch.func.functional_call, so gradients reach z only. Its FLOPs are the base model's
plus the projection's, once per call (not per sample): 2 D d for dense (an mm), 2 nnz for
sparse, and for Fastfood 0 executed (no matmul kernel; FlopCounterMode does not count the
transform's adds) with the transform's arithmetic declared as ideal FLOPs. Training pays the
dense backward of the model (dL/dtheta) plus the projection's transpose.

Not copied from the SAID reference code (Aghajanyan's `intrinsic.py`, also in t-few): it draws a
separate Fastfood transform per parameter tensor (each tensor's columns unit-norm on its own),
leaves its dense ("random") projection unnormalised, and one variant turns each matrix's offset
into a rank-one outer product. Here, as in Li et al., one P spans all D parameters.

Counting and budgets (choices; docs/suites.md):
- Trainable = d (z). Stored = D (theta0, frozen parameters) + d. P is not stored: it is a
  function of (seed, D, d), held as non-persistent buffers, the way Li et al. regenerate it;
  its bytes show in the memory measurements and in `IntrinsicModel.projection.held_bytes()`.
- adapt: a budget is d / D, exact in d, so the harness's search hits it within one step.
- train: the harness counts stored parameters, D + d, against the dense model's D, so every d
  is over any budget in (0, 1] (the cell says over_budget and runs at the smallest d). Run it
  with explicit `knobs = [...]` (values of d), as suites/intrinsic-dimension.toml does. What
  Li et al. compare is d itself (and, for compression, d numbers plus a seed): that is the
  knob column.
- `merged_inference` (default false): `for_inference` returns the base model with theta0 + P z
  written into its weights, so deployed FLOPs and latency are the dense model's. By default the
  measured forward is the training form, projection included.
- The knob's upper end is D, lowered for dense and sparse projections to the largest d whose
  P fits in `max_projection_bytes` (default 256 MiB); an explicit larger d is refused with an
  error naming the sizes.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import MERGED_INFERENCE
from lowdim_bench_builtin.methods._projections import PROJECTIONS, Projection, largest_dim, make_projection

DEFAULT_MAX_BYTES = 256 * 2**20
PROJECTION_SEED_OFFSET = 1_000_003


class IntrinsicModel(nn.Module):
    """A frozen base model whose parameters are theta0 + P z (times a per-tensor scale for SAID).

    `base` keeps theta0 as its own (frozen) parameters; `z` is the only trainable tensor unless
    `scales` (SAID's lambdas, one per parameter tensor) is given.
    """

    def __init__(self, base: nn.Module, projection: Projection, said: bool = False) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        # named_parameters() lists a tied tensor once, so D counts it once and its offset is shared
        self.names = [n for n, _ in base.named_parameters()]
        self.shapes = [p.shape for _, p in base.named_parameters()]
        self.sizes = [p.numel() for _, p in base.named_parameters()]
        self.D = sum(self.sizes)
        if projection.D != self.D:
            raise PluginError(f"intrinsic: projection has D={projection.D}, the model has {self.D} parameters")
        self.projection = projection
        p0 = next(base.parameters())
        self.z = nn.Parameter(torch.zeros(projection.d, device=p0.device, dtype=p0.dtype))
        self.scales = nn.Parameter(torch.ones(len(self.names), device=p0.device, dtype=p0.dtype)) if said else None

    @property
    def d(self) -> int:
        """Trainable elements: z, plus the per-tensor scales under SAID."""
        return self.z.numel() + (self.scales.numel() if self.scales is not None else 0)

    def offsets(self) -> list[torch.Tensor]:
        """Each parameter tensor's offset (P z)_i, times lambda_i under SAID, in its own shape."""
        flat = self.projection(self.z)
        parts = torch.split(flat, self.sizes)
        out = []
        for i, (part, shape) in enumerate(zip(parts, self.shapes)):
            if self.scales is not None:
                part = part * self.scales[i]
            out.append(part.view(shape))
        return out

    def effective_parameters(self) -> dict[str, torch.Tensor]:
        """theta0 + offset per parameter name, differentiable in z (and the scales)."""
        params = dict(self.base.named_parameters())
        return {n: params[n] + off for n, off in zip(self.names, self.offsets())}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.base, self.effective_parameters(), args, kwargs)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """A plain copy of the base model with theta0 + offset written into its weights."""
        out = copy.deepcopy(self.base)
        params = dict(out.named_parameters())
        for n, value in self.effective_parameters().items():
            params[n].copy_(value)
        return out

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}, tensors={len(self.names)}, said={self.scales is not None}"


def as_dim(size: float | None, method: str, low: int = 1) -> int:
    if size is None or float(size) != int(size) or int(size) < low:
        raise PluginError(f"method {method!r}: dim must be an integer >= {low}, got {size!r}")
    return int(size)


def count_elements(model: nn.Module) -> int:
    """D: parameter elements, a tied tensor once (as named_parameters lists it)."""
    return sum(p.numel() for p in model.parameters())


def count_tensors(model: nn.Module) -> int:
    """m: parameter tensors, a tied tensor once."""
    return len(list(model.parameters()))


class IntrinsicMethod(Method):
    name = "intrinsic"
    kind = "train"
    kinds = ("train", "adapt")
    knob = Knob("dim", 1, None)
    params = {"projection": Param("fastfood", choices=("dense", "sparse", "fastfood"),
                                  help="the random projection P (dense Gaussian, sparse, or Fastfood, never materialised)"),
              "max_projection_bytes": Param(DEFAULT_MAX_BYTES, int, low=1, help="refuse a projection larger than this"),
              "merged_inference": MERGED_INFERENCE}
    targets = ("Module",)  # every parameter tensor
    identity_at_init = True
    description = ("Intrinsic dimension (Li et al. 2018): theta = theta0 + P z, only z (d) trained; "
                   "P dense, sparse or Fastfood over all D parameters.")
    said = False

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        if h["projection"] not in PROJECTIONS:
            raise PluginError(f"{self.name}: projection must be one of {list(PROJECTIONS)}, got {h['projection']!r}")
        cap = h["max_projection_bytes"]
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0:
            raise PluginError(f"{self.name}: max_projection_bytes must be a positive number, got {cap!r}")

    def min_dim(self, model: nn.Module) -> int:
        return 1

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        big = count_elements(model)
        if big == 0:
            raise PluginError(f"{self.name}: the model has no parameters")
        high = largest_dim(self.hparams["projection"], big, int(self.hparams["max_projection_bytes"]))
        low = self.min_dim(model)
        if high < low:
            raise PluginError(f"{self.name}: no d fits a {self.hparams['projection']} projection of D={big} under "
                              f"max_projection_bytes={self.hparams['max_projection_bytes']}")
        return low, high

    def z_dim(self, model: nn.Module, dim: int) -> int:
        """How many of the d trainable numbers are z (all of them here; SAID keeps some for lambdas)."""
        return dim

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        low = self.min_dim(model)
        dim = as_dim(size, self.name, low)
        big = count_elements(model)
        if dim > big:
            raise PluginError(f"method {self.name!r}: dim d={dim} exceeds the model's D={big} parameters")
        h = self.hparams
        proj = make_projection(h["projection"], big, self.z_dim(model, dim), int(ctx.seed) + PROJECTION_SEED_OFFSET,
                               int(h["max_projection_bytes"]))
        p0 = next(model.parameters())
        proj = proj.to(p0.device)
        return IntrinsicModel(copy.deepcopy(model), proj, said=self.said)

    def for_inference(self, model: nn.Module) -> nn.Module:
        if self.hparams["merged_inference"] and isinstance(model, IntrinsicModel):
            return model.merged()
        return model


@hookimpl
def register_methods(register) -> None:
    register(IntrinsicMethod)
