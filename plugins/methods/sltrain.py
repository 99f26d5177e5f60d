"""SLTrain (Han et al. 2024): train W = B (A alpha/r) + S from scratch, S sparse on a fixed support.

The support is floor(delta m n) entries of the (m, n) weight, drawn once and sorted; only its
values are parameters, and no dense m x n tensor is stored. Init as the official code
(andyjm3/SLTrain): A Kaiming-uniform(a=sqrt 5), B = 0 (so W = S at start), values
U(-1/sqrt n, 1/sqrt n). Stored parameters per layer: r (m + n) + floor(delta m n) (+ bias).

Choices (also in the report and docs):
- delta 0.03 and alpha 32 are the paper's 60M LLaMA setting.
- The support is stored as flat indices row * n + col in the smallest signed integer dtype
  that holds m n - 1 (int16, int32, else int64): a buffer counted in stored bytes, not params.
- Supports come from a generator seeded with ctx.seed and inits from a second generator seeded
  with ctx.seed + 1, so a layer's support does not change with the rank the budget search tries.
- impl "factored" (default): x A^T B^T scale + S x through a torch.sparse COO product (autograd
  reaches the values). impl "rebuild": the official kernel's form, dense W rebuilt in forward and
  again in backward by a custom autograd Function that saves only x, A, B, values and indices.
- Targets every nn.Linear except the head (`skip_modules`): "auto" skips Linears whose last name
  part is in _layers.HEAD_NAMES, or, when none is so named, the last Linear registered. A list of name
  suffixes skips exactly those. Linears with tied weights or owned by nn.MultiheadAttention are
  always left dense. The original bias (the fresh model's init) is kept.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import SKIP_MODULES, as_rank, body_linears, check_suffixes, copy_swapping

IMPLS = ("factored", "rebuild")


def index_dtype(numel: int) -> torch.dtype:
    """Smallest signed integer dtype that holds flat indices 0 .. numel - 1."""
    for dtype in (torch.int16, torch.int32):
        if numel - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def draw_support(m: int, n: int, delta: float, generator: torch.Generator) -> torch.Tensor:
    """floor(delta m n) distinct flat indices of an (m, n) matrix, sorted, as int64."""
    nnz = math.floor(delta * m * n)
    return torch.randperm(m * n, generator=generator)[:nnz].sort().values


def _dense_weight(a: torch.Tensor, b: torch.Tensor, values: torch.Tensor, idx: torch.Tensor, scale: float) -> torch.Tensor:
    """W = B A scale + scatter(values at idx): the only place a dense W exists, and only transiently."""
    w = torch.mm(b, a).mul_(scale)
    w.view(-1).index_add_(0, idx, values)
    return w


class _RebuildLinear(torch.autograd.Function):
    """x W^T with W rebuilt from (A, B, values) in forward and again in backward, never saved."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, values: torch.Tensor,
                idx: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(x, a, b, values, idx)
        ctx.scale = scale
        return F.linear(x, _dense_weight(a, b, values, idx.long(), scale))

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor):
        x, a, b, values, idx = ctx.saved_tensors
        idx = idx.long()
        scale = ctx.scale
        grad_x = grad_a = grad_b = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ _dense_weight(a, b, values, idx, scale)
        if any(ctx.needs_input_grad[1:4]):
            gy = grad_y.reshape(-1, grad_y.shape[-1])
            grad_w = gy.t() @ x.reshape(-1, x.shape[-1])
            if ctx.needs_input_grad[1]:
                grad_a = (b.t() @ grad_w) * scale
            if ctx.needs_input_grad[2]:
                grad_b = (grad_w @ a.t()) * scale
            if ctx.needs_input_grad[3]:
                grad_values = grad_w.view(-1)[idx]
        return grad_x, grad_a, grad_b, grad_values, None, None


class SLTrainLinear(nn.Module):
    """A Linear whose weight is B (A alpha/r) + S, S given by `values` at the flat `indices`."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, support: torch.Tensor,
                 bias: torch.Tensor | None, impl: str, generator: torch.Generator,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise PluginError(f"sltrain: impl must be one of {IMPLS}, got {impl!r}")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha, self.impl = rank, alpha, impl
        self.scale = alpha / rank
        dtype = dtype or torch.get_default_dtype()
        a = torch.empty(rank, in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(in_features)
        values = torch.empty(support.numel()).uniform_(-bound, bound, generator=generator)
        self.A = nn.Parameter(a.to(device=device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.values = nn.Parameter(values.to(device=device, dtype=dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().to(device=device, dtype=dtype))
        idx = support.to(index_dtype(in_features * out_features))
        self.register_buffer("indices", idx.to(device), persistent=True)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def sparse_weight(self) -> torch.Tensor:
        """S as a coalesced COO tensor built from `values`, so autograd reaches the values."""
        idx = self.indices.long()
        rows = torch.div(idx, self.in_features, rounding_mode="floor")
        coords = torch.stack([rows, idx - rows * self.in_features])
        return torch.sparse_coo_tensor(coords, self.values, (self.out_features, self.in_features),
                                       is_coalesced=True, check_invariants=False)

    def dense_weight(self) -> torch.Tensor:
        """The full W, for inspection and tests; never stored."""
        return _dense_weight(self.A, self.B, self.values, self.indices.long(), self.scale)

    @property
    def weight(self) -> torch.Tensor:
        """The rebuilt dense W (not stored), for parents that read `.weight` directly, such as
        nn.TransformerEncoderLayer's inference fast path."""
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "rebuild":
            y = _RebuildLinear.apply(x, self.A, self.B, self.values, self.indices, self.scale)
        else:
            y = F.linear(F.linear(x, self.A), self.B) * self.scale
            if self.nnz:
                x2 = x.reshape(-1, self.in_features)
                s = torch.sparse.mm(self.sparse_weight(), x2.t()).t()
                y = y + s.reshape(y.shape)
        return y if self.bias is None else y + self.bias

    def ideal_flops(self, x: torch.Tensor) -> int:
        """What the math needs: 2 per multiply-add of the factors and of the non-zeros, per token."""
        tokens = x.numel() // self.in_features
        return 2 * tokens * (self.rank * (self.in_features + self.out_features) + self.nnz)

    def ideal_backward_flops(self, x: torch.Tensor) -> int:
        """What the gradients need, factored and sparse (torch's sparse product builds a dense
        d_out x d_in gradient for the values, ~4x this): with u = A x, dB = g u^T and
        dU = B^T g (2 T d_out r each), dA = dU x^T (2 T r d_in), d values = g x^T sampled on the
        support (2 T nnz), and for an input that needs a gradient dx = A^T dU + S^T g
        (2 T (r d_in + nnz))."""
        tokens = x.numel() // self.in_features
        r, m, n = self.rank, self.out_features, self.in_features
        total = 0
        if self.B.requires_grad:
            total += 2 * tokens * m * r
        if self.A.requires_grad or x.requires_grad:
            total += 2 * tokens * m * r  # dU, needed by dA and dx
        if self.A.requires_grad:
            total += 2 * tokens * r * n
        if self.values.requires_grad:
            total += 2 * tokens * self.nnz
        if x.requires_grad:
            total += 2 * tokens * (r * n + self.nnz)
        return total

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"nnz={self.nnz}, alpha={self.alpha}, impl={self.impl!r}, bias={self.bias is not None}")


class SLTrainMethod(Method):
    name = "sltrain"
    kind = "train"
    knob = Knob("rank", 1, None)
    params = {"delta": Param(0.03, float, low=0.0, high=0.999, help="density of the fixed random sparse part S"),
              "alpha": Param(32.0, float, low=1e-12, help="B A is scaled by alpha / rank (official default 32)"),
              "impl": Param("factored", choices=("factored", "rebuild"), help='"factored": x A^T B^T + sparse product; '
                            '"rebuild": the official kernel, dense W rebuilt each call'),
              "skip_modules": SKIP_MODULES}
    targets = ("Linear",)
    identity_at_init = False
    description = "SLTrain: W = B A alpha/r + S, S on a fixed random support (delta of entries); head and embeddings dense."

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        if not 0.0 <= float(h["delta"]) < 1.0:
            raise PluginError(f"sltrain: delta must be in [0, 1), got {h['delta']!r}")
        if not float(h["alpha"]) > 0:
            raise PluginError(f"sltrain: alpha must be > 0, got {h['alpha']!r}")
        if h["impl"] not in IMPLS:
            raise PluginError(f"sltrain: impl must be one of {IMPLS}, got {h['impl']!r}")
        check_suffixes(h["skip_modules"], "auto", method="sltrain", hparam="skip_modules", allow_empty=True)

    def select(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        """(name, Linear) of every layer replaced, in registration order: all but the head."""
        chosen = body_linears(model, self.hparams["skip_modules"], self.name)
        if not chosen:
            raise PluginError("sltrain: no Linear left to replace once the head is skipped")
        return chosen

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(min(m.in_features, m.out_features) for _, m in self.select(model))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        h = self.hparams
        support_gen = torch.Generator().manual_seed(int(ctx.seed))
        init_gen = torch.Generator().manual_seed(int(ctx.seed) + 1)
        swaps = []
        for _, lin in self.select(model):
            support = draw_support(lin.out_features, lin.in_features, float(h["delta"]), support_gen)
            swaps.append((lin, SLTrainLinear(
                lin.in_features, lin.out_features, rank, float(h["alpha"]), support, lin.bias, h["impl"],
                init_gen, device=lin.weight.device, dtype=lin.weight.dtype)))
        return copy_swapping(model, swaps)


@hookimpl
def register_methods(register) -> None:
    register(SLTrainMethod)
