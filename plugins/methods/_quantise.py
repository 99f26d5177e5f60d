"""Shared code of the vector-quantisation methods (pq, lr2vq): k-means, the VQ layer, the method base.

Why one module: pq is lr2vq without the projection (d~ = m, P = I), so both must cut weights into
subvectors, cluster, store codes and count bytes the same way, or the comparison between them
measures our code instead of the methods.

Layout: a Linear's weight W (d_out, d_in) is cut along each row into d_in / m contiguous
subvectors of size m, n = d_out d_in / m of them. Each layer has its own codebook, shared by all
its subvectors (the per-layer codebook of the VQ baselines the LR2VQ paper compares with, PQF and
"And the bit goes down"). A VQ layer stores:
- `codebook` (k x r) float parameter, r = m for pq, r = d~ for lr2vq;
- `projection` P (m x d~) float parameter, lr2vq only (None for pq);
- `codes` (d_out, d_in / m) integer buffer in the smallest dtype that holds k - 1 (uint8 up to
  k = 256, int16 up to 32768, else int32): counted by lowdim-bench as index bytes, not elements;
- the original bias.
The weight is W = reshape((codebook P^T)[codes]). Ideal storage is n ceil(log2 k) code bits plus
32 bits per float element; `VQLinear.ideal_bits()` gives that, count_params the bytes we store.

k-means: k-means++ seeding (one draw per centre from a seeded torch.Generator), then at most
`iters` Lloyd iterations (stopping early only at a fixed point, which further iterations would not
change), in float64 on CPU whatever the model's device (so the codes do not depend on it),
assignments in cache-sized row chunks so the n x k distance matrix never exists whole.
An empty cluster keeps its previous centre. With k >= n every subvector is its own centre.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.layers import RECOVER, SKIP_ABOVE_BREAK_EVEN, TARGET_MODULES, check_suffixes, copy_swapping, find_layers, split_by_suffixes

_CHUNK_ELEMENTS = 1 << 18  # distance-matrix elements per assignment chunk: 2 MiB in float64, cache-sized (10x faster than 32 MiB chunks here)


# ---- codes ---------------------------------------------------------------------------------

def code_dtype(k: int) -> torch.dtype:
    """Smallest integer dtype holding codes 0 .. k - 1 (uint8 is unsigned: up to 255)."""
    if k <= 256:
        return torch.uint8
    if k <= 1 << 15:
        return torch.int16
    return torch.int32


def code_bits(k: int) -> int:
    """Bits of one fixed-length code for k centres: ceil(log2 k), 0 when k = 1."""
    return math.ceil(math.log2(k)) if k > 1 else 0


def to_subvectors(weight: torch.Tensor, m: int) -> torch.Tensor:
    """(n, m) rows of `weight` (d_out, d_in) cut into contiguous blocks of m along d_in."""
    d_out, d_in = weight.shape
    if d_in % m:
        raise PluginError(f"subvector size m={m} does not divide d_in={d_in}")
    return weight.reshape(d_out * (d_in // m), m)


# ---- k-means -------------------------------------------------------------------------------

@dataclass
class KMeans:
    centroids: torch.Tensor  # (k, d)
    codes: torch.Tensor  # (n,) int64
    iterations: int  # Lloyd iterations run


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre of each row of x (first one on ties), chunked over rows."""
    c_sq = (centroids * centroids).sum(1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, centroids.shape[0]))
    out = torch.empty(x.shape[0], dtype=torch.long)
    for start in range(0, x.shape[0], rows):
        part = x[start:start + rows]
        # ||x - c||^2 minus the row's own ||x||^2, which does not change the argmin
        out[start:start + rows] = torch.addmm(c_sq[None, :], part, centroids.t(), alpha=-2.0).argmin(1)
    return out


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): each next centre drawn with probability
    proportional to its squared distance from the nearest centre so far."""
    n = x.shape[0]
    x_sq = (x * x).sum(1)

    def dist2(i: int) -> torch.Tensor:  # ||x - x_i||^2 as one matrix-vector product (fast for small d)
        return torch.addmv(x_sq + x_sq[i], x, x[i], alpha=-2.0).clamp_min_(0.0)

    chosen = [int(torch.randint(n, (1,), generator=generator))]
    d2 = dist2(chosen[0])
    for _ in range(1, k):
        total = float(d2.sum())
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if total > 0:
            idx = int(torch.searchsorted(d2.cumsum(0), torch.tensor([u * total], dtype=d2.dtype)).clamp(max=n - 1))
        else:  # every point already coincides with a centre: any point is as good
            idx = int(u * n)
        chosen.append(idx)
        d2 = torch.minimum(d2, dist2(idx))
    return x[chosen].clone()


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> KMeans:
    """Cluster the rows of x into min(k, n) centres, in float64. Deterministic for a given generator state."""
    if k < 1 or iters < 0:
        raise PluginError(f"kmeans: need k >= 1 and iters >= 0, got k={k}, iters={iters}")
    x = x.detach().to(torch.float64)
    n, d = x.shape
    if k >= n:
        return KMeans(x.clone(), torch.arange(n), 0)
    centroids = kmeans_pp(x, k, generator)
    codes = assign(x, centroids)
    done = 0
    for done in range(1, iters + 1):
        sums = torch.zeros(k, d, dtype=x.dtype).index_add_(0, codes, x)
        counts = torch.bincount(codes, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(x.dtype)
        new = assign(x, centroids)
        if torch.equal(new, codes):
            codes = new
            break
        codes = new
    return KMeans(centroids, codes, done)


# ---- the layer -----------------------------------------------------------------------------

class VQLinear(nn.Module):
    """A Linear whose weight is decoded from per-layer codes: W = reshape((codebook P^T)[codes]).

    `projection` None is plain product quantisation (P = I). Codes are a frozen integer buffer;
    gradients reach the codebook and the projection through the gather (assignments fixed).
    """

    def __init__(self, in_features: int, out_features: int, codebook: torch.Tensor, codes: torch.Tensor,
                 projection: torch.Tensor | None, bias: torch.Tensor | None, trainable: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if codes.dim() != 2 or codes.shape[0] != out_features or in_features % codes.shape[1]:
            raise PluginError(f"VQLinear: codes of shape {tuple(codes.shape)} do not tile a {out_features}x{in_features} weight")
        self.m = in_features // codes.shape[1]
        self.codebook = nn.Parameter(codebook.detach().clone(), requires_grad=trainable)
        self.projection = None if projection is None else nn.Parameter(projection.detach().clone(), requires_grad=trainable)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=trainable)
        self.register_buffer("codes", codes.to(code_dtype(codebook.shape[0])), persistent=True)

    @property
    def k(self) -> int:
        return self.codebook.shape[0]

    @property
    def clustering_dim(self) -> int:
        """d~: the dimension clustered (m for plain PQ)."""
        return self.codebook.shape[1]

    @property
    def n_subvectors(self) -> int:
        return self.codes.numel()

    def table(self) -> torch.Tensor:
        """The decoded codebook (k x m): codebook P^T, or the codebook itself for PQ."""
        return self.codebook if self.projection is None else self.codebook @ self.projection.t()

    @property
    def weight(self) -> torch.Tensor:
        """The decoded W (not stored), also for parents that read `.weight` directly."""
        return F.embedding(self.codes.long(), self.table()).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def float_elements(self) -> int:
        return sum(p.numel() for p in (self.codebook, self.projection, self.bias) if p is not None)

    def ideal_bits(self) -> int:
        """Storage with fixed-length codes of ceil(log2 k) bits and float32 values."""
        return self.n_subvectors * code_bits(self.k) + 32 * self.float_elements()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, m={self.m}, k={self.k}, "
                f"d_tilde={self.clustering_dim}, projection={self.projection is not None}, bias={self.bias is not None}")


def vq_bytes(n: int, k: int, r: int, m: int, projection: bool, value_size: int = 4) -> int:
    """Bytes a VQ layer's weight takes as we store it (bias left out: both forms keep it)."""
    return value_size * (k * r + (m * r if projection else 0)) + n * torch.empty((), dtype=code_dtype(k)).element_size()


# ---- the method base -----------------------------------------------------------------------

class VqMethod(Method):
    """Common mechanics of pq and lr2vq; subclasses say how a layer's subvectors are encoded."""

    kind = "compress"
    knob = Knob("k", 1, None)
    targets = ("Linear",)
    identity_at_init = False
    params = {"m": Param(8, int, low=1, help="subvector length (weights per code)"),
              "kmeans_iters": Param(20, int, low=0, help="Lloyd iterations after k-means++ seeding"),
              "target_modules": TARGET_MODULES, "skip_above_break_even": SKIP_ABOVE_BREAK_EVEN, "recover": RECOVER}

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        for key, low in (("m", 1), ("kmeans_iters", 0)):
            if isinstance(h[key], bool) or not isinstance(h[key], int) or h[key] < low:
                raise PluginError(f"{self.name}: {key} must be an integer >= {low}, got {h[key]!r}")
        for key in ("recover", "skip_above_break_even"):
            if not isinstance(h[key], bool):
                raise PluginError(f"{self.name}: {key} must be true or false, got {h[key]!r}")
        check_suffixes(h["target_modules"], "all", method=self.name, hparam="target_modules")

    # subclasses ------------------------------------------------------------------------------
    def clustering_dim(self) -> int:
        raise NotImplementedError

    def encode(self, sub: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(codebook, codes, projection or None) for the (n, m) float64 subvectors."""
        raise NotImplementedError

    # shared ----------------------------------------------------------------------------------
    def select(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        """(name, Linear) of every layer to quantise, in registration order; m must divide each d_in."""
        tm = self.hparams["target_modules"]
        found = find_layers(model, (nn.Linear,), skip_tied=True)
        if tm != "all":
            found, _ = split_by_suffixes(found, tm, method=self.name, hparam="target_modules", what="quantisable Linear")
        if not found:
            raise PluginError(f"{self.name}: the model has no Linear layer to quantise")
        m = self.hparams["m"]
        bad = [f"{n} (d_in={lin.in_features})" for n, lin in found if lin.in_features % m]
        if bad:
            raise PluginError(f"{self.name}: subvector size m={m} does not divide the input size of {bad}; "
                              f"choose another m or leave them out with target_modules")
        return found

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        m = self.hparams["m"]
        return 1, max(lin.in_features * lin.out_features // m for _, lin in self.select(model))

    def layer_k(self, linear: nn.Linear, k: int) -> int | None:
        """Centres this layer gets (at most its subvector count), or None when it stays dense:
        with skip_above_break_even, when its VQ weight would take at least the dense weight's bytes."""
        m = self.hparams["m"]
        n = linear.in_features * linear.out_features // m
        k = min(k, n)
        if self.hparams["skip_above_break_even"]:
            vq = vq_bytes(n, k, self.clustering_dim(), m, self.has_projection())
            if vq >= linear.weight.numel() * linear.weight.element_size():
                return None
        return k

    def has_projection(self) -> bool:
        return False

    def encode_layer(self, name: str, linear: nn.Linear, sub: torch.Tensor, k: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`encode` for one named layer (lr2vq uses the name to find its trained representation)."""
        return self.encode(sub, k, generator)

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if size is None or float(size) != int(size) or int(size) < 1:
            raise PluginError(f"method {self.name!r}: k (centres per layer) must be an integer >= 1, got {size!r}")
        swaps = []
        for i, (name, lin) in enumerate(self.select(model)):
            k = self.layer_k(lin, int(size))
            if k is None:
                continue
            # one generator per layer, so a layer's clustering does not depend on the others
            gen = torch.Generator().manual_seed(int(ctx.seed) * 7919 + i)
            # on CPU in float64 whatever the model's device, so codes do not depend on it
            sub = to_subvectors(lin.weight.detach().to(device="cpu", dtype=torch.float64), self.hparams["m"])
            codebook, codes, projection = self.encode_layer(name, lin, sub, k, gen)
            like = {"device": lin.weight.device, "dtype": lin.weight.dtype}
            swaps.append((lin, VQLinear(
                lin.in_features, lin.out_features, codebook.to(**like),
                codes.reshape(lin.out_features, -1).to(lin.weight.device),
                None if projection is None else projection.to(**like), lin.bias,
                trainable=lin.weight.requires_grad)))
        return copy_swapping(model, swaps)
