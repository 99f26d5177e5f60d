"""SVFit (Sun et al. 2024): fine-tune only the top-r singular values of each pretrained weight.

W = U S V^T (thin SVD, float64). With W_r = U_r S_r V_r^T the top-r part and W_e = W - W_r the
frozen rest, the adapted weight is W' = W_e + U_r diag(sigma) V_r^T: U_r, V_r and W_e frozen,
only sigma (r numbers per matrix) trainable, initialised to S_r, so the model is unchanged at
step 0. Trainable: r per adapted matrix. Stored extra (unmerged): r (d_in + d_out) frozen
singular vectors, plus r for sigma and r for the frozen S_r (below).

Choices (also in the report and docs):
- Exact identity at init: we keep the original W (frozen) and S_r as a buffer, and form
  W' = W + U_r diag(sigma - S_r) V_r^T. That equals W_e + U_r diag(sigma) V_r^T in exact
  arithmetic; in float32 it is bit-exact W at step 0, where W_e + W_r is off by one rounding.
- Conv2d: the stored kernel (C_out, C_in/groups, kh, kw) is reshaped to ONE matrix
  (C_out, C_in/groups * kh * kw) and decomposed; stride, padding, dilation, groups and the
  padding mode are the base conv's. We do not split a grouped kernel into one matrix per group:
  for a depthwise conv each group's matrix is 1 x (kh kw), of rank 1, so "top-r" would mean a
  per-channel scale whatever r is; the whole-kernel matrix keeps r meaningful (rank up to
  min(C_out, C_in/groups kh kw)), and any matrix of that shape is a valid grouped kernel.
- Forward: W' is rebuilt each call ((U_r * (sigma - S_r)) @ V_r^T, 2 d_out r d_in FLOPs per
  call, whatever the batch) and applied with one dense linear/conv. This works for every conv
  (grouped ones included). `ideal_flops` declares dense + the cheaper of that rebuild and the
  factored order W x + U_r((sigma - S_r) * V_r^T x) (2 P r (d_in + d_out) for P output
  positions), i.e. what the math needs for that call; the executed figure is what ran.
- Ranks: one r for every adapted matrix, clamped to each matrix's full rank min(d_out, d_in)
  (so the budget search sees trainable = sum min(r, k_l), monotone in r).
- `which` = "top" (the method) or "bottom" (the ablation: the r smallest singular values and
  their vectors), for METHODS.md's small check.
- Every Linear and Conv2d is adapted by default (`target_modules`), the head included, as lora;
  all other base parameters (biases, norms) are frozen. Linears owned by nn.MultiheadAttention
  are skipped.
- merge()/unmerge() are explicit; with `merged_inference`, `for_inference` merges, so inference
  costs exactly the dense FLOPs.
- Learning rate: sigma holds singular values (order 1-10 on digits-mlp), so it needs a larger
  rate than LoRA's factors: on digits-mlp adapt (3 seeds) SVFit r=4 picked the top of the grid
  3e-3..3e-2 (0.31 test accuracy) and reached 0.40 with 3e-2..3e-1; give it its own `lr_grid`.
- The SVD of each original weight is cached while that tensor lives and is unchanged, because the
  budget search applies the method several times.

The paper's regime: it keeps the singular values that cover about 99% of each weight's energy,
i.e. near full rank (RoBERTa-base: 768 x 24 = 18,432 trainable against LoRA r=8's 0.3M, its
"16x fewer"); at r = 1-4 SVFit is far below that regime. And it can only re-weight the pretrained
singular directions: a target that permutes inputs (transposed digits) rotates them, which no
choice of sigma undoes. suites/paper-checks.toml checks it at full rank (every matrix's
min(d_out, d_in): 202 trainable on digits-mlp) against LoRA at 17x its parameters (r = 6), on a
target whose change re-weighting can follow (digits' "dim" shift).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import MERGED_INFERENCE, TARGET_MODULES, as_rank, check_suffixes, copy_swapping, find_layers, split_by_suffixes

WHICH = ("top", "bottom")

# weight tensor -> (its _version when decomposed, U, S, Vh) of weight.reshape(d_out, -1) in float64
_SVD_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def matrix_svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin float64 SVD of the weight as a (d_out, everything else) matrix, cached."""
    hit = _SVD_CACHE.get(weight)
    if hit is not None and hit[0] == weight._version:
        return hit[1], hit[2], hit[3]
    u, s, vh = torch.linalg.svd(weight.detach().double().reshape(weight.shape[0], -1), full_matrices=False)
    _SVD_CACHE[weight] = (weight._version, u, s, vh)
    return u, s, vh


def full_rank(module: nn.Module) -> int:
    """min(d_out, d_in) of the layer's weight matrix (a conv kernel reshaped as one matrix)."""
    w = module.weight
    return min(w.shape[0], w[0].numel())


def output_positions(module: nn.Module, x: torch.Tensor) -> int:
    """How many output vectors a call produces: tokens for a Linear, N Ho Wo for a Conv2d."""
    if isinstance(module, nn.Linear):
        return x.numel() // module.in_features
    n = x.shape[0] if x.dim() == 4 else 1
    size = 1
    for i, length in enumerate(x.shape[-2:]):
        if module.padding == "same":
            size *= length
            continue
        pad = 0 if module.padding == "valid" else 2 * module.padding[i]
        span = module.dilation[i] * (module.kernel_size[i] - 1) + 1
        size *= (length + pad - span) // module.stride[i] + 1
    return n * size


class SvfitLayer(nn.Module):
    """A frozen nn.Linear or nn.Conv2d (`base`) whose weight is W + U_r diag(sigma - S_r) V_r^T."""

    def __init__(self, base: nn.Module, rank: int, which: str) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise PluginError(f"svfit adapts nn.Linear and nn.Conv2d, not {type(base).__name__}")
        if which not in WHICH:
            raise PluginError(f"svfit: which must be one of {list(WHICH)}, got {which!r}")
        u, s, vh = matrix_svd(base.weight)
        k = s.numel()
        r = min(rank, k)
        idx = slice(0, r) if which == "top" else slice(k - r, k)
        self.base = copy.deepcopy(base)
        self.base.requires_grad_(False)
        self.rank = r
        self.which = which
        self.merged = False
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.register_buffer("u", u[:, idx].to(**like).contiguous())  # (d_out, r)
        self.register_buffer("v", vh[idx].to(**like).contiguous())  # (r, d_in)
        self.register_buffer("sigma0", s[idx].to(**like).contiguous())  # the pretrained values
        self.sigma = nn.Parameter(s[idx].to(**like).clone())

    def delta(self) -> torch.Tensor:
        """U_r diag(sigma - S_r) V_r^T in the base weight's shape (zero at init), differentiable in sigma."""
        return ((self.u * (self.sigma - self.sigma0)) @ self.v).view(self.base.weight.shape)

    @property
    def weight(self) -> torch.Tensor:
        """The adapted weight W' (for parents that read `.weight` directly)."""
        if self.merged:
            return self.base.weight
        return self.base.weight + self.delta()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        w = self.weight
        if isinstance(self.base, nn.Linear):
            return F.linear(x, w, self.base.bias)
        return self.base._conv_forward(x, w, self.base.bias)

    def dense_flops(self, x: torch.Tensor) -> int:
        """FLOPs of the base layer alone on this input: 2 P d_out d_in."""
        w = self.base.weight
        return 2 * output_positions(self.base, x) * w.shape[0] * w[0].numel()

    def ideal_flops(self, x: torch.Tensor) -> int:
        """Dense plus the cheaper exact order for the update (rebuild W', or factored); merged: dense."""
        dense = self.dense_flops(x)
        if self.merged:
            return dense
        d_out, d_in = self.u.shape[0], self.v.shape[1]
        rebuild = 2 * d_out * self.rank * d_in
        # factored: V^T x on every group's input (C_in kh kw per output position), then U (d_out)
        full_in = d_in * (self.base.groups if isinstance(self.base, nn.Conv2d) else 1)
        factored = 2 * output_positions(self.base, x) * self.rank * (full_in + d_out)
        return dense + min(rebuild, factored)

    @torch.no_grad()
    def merge(self) -> None:
        """Write W' into the base weight, so the forward is the plain dense layer."""
        if not self.merged:
            w = self.base.weight
            d = (self.u.double() * (self.sigma.double() - self.sigma0.double())) @ self.v.double()
            w.copy_((w.double() + d.view(w.shape)).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.base.weight
            d = (self.u.double() * (self.sigma.double() - self.sigma0.double())) @ self.v.double()
            w.copy_((w.double() - d.view(w.shape)).to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, which={self.which!r}, merged={self.merged}"


def merge_svfit(model: nn.Module) -> int:
    """Merge every SvfitLayer in place; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, SvfitLayer)]
    for m in layers:
        m.merge()
    return len(layers)


class SvfitMethod(Method):
    name = "svfit"
    kind = "adapt"
    knob = Knob("rank", 1, None)
    params = {"which": Param("top", choices=("top", "bottom"), help='train the top-r singular values, or the '
                             'bottom-r ("bottom": the paper\'s ablation)'),
              "target_modules": TARGET_MODULES, "merged_inference": MERGED_INFERENCE}
    targets = ("Linear", "Conv2d")
    identity_at_init = True
    description = "SVFit: train only the top-r singular values of each Linear/Conv2d weight (U_r, V_r, rest frozen)."

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        if h["which"] not in WHICH:
            raise PluginError(f"svfit: which must be one of {list(WHICH)}, got {h['which']!r}")
        check_suffixes(h["target_modules"], "all", method="svfit", hparam="target_modules")
        if not isinstance(h["merged_inference"], bool):
            raise PluginError(f"svfit: merged_inference must be true or false, got {h['merged_inference']!r}")

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        tm = self.hparams["target_modules"]
        found = find_layers(model, (nn.Linear, nn.Conv2d), owners=(nn.MultiheadAttention, SvfitLayer))
        if tm != "all":
            found, _ = split_by_suffixes(found, tm, method="svfit", hparam="target_modules", what="Linear/Conv2d")
        if not found:
            raise PluginError("svfit: the model has no Linear or Conv2d layer to adapt")
        return found

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(full_rank(m) for _, m in self.select(model))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        # Layers are built from the original weights (so the SVD cache hits across applies);
        # each copies its base, and the deepcopy memo puts the layers in place of the originals.
        swaps = [(m, SvfitLayer(m, rank, self.hparams["which"])) for _, m in self.select(model)]
        new = copy_swapping(model, swaps)
        for p in new.parameters():
            p.requires_grad_(False)
        for _, layer in swaps:
            layer.sigma.requires_grad_(True)
        return new

    def for_inference(self, model: nn.Module) -> nn.Module:
        if self.hparams["merged_inference"]:
            merge_svfit(model)
        return model


@hookimpl
def register_methods(register) -> None:
    register(SvfitMethod)
