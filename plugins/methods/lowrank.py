"""Low-rank training from scratch: every body Linear is W = B A (inner dimension r), both factors trained.

The baseline SLTrain and Maestro are measured against ("pure low rank"). Why its own method and
not sltrain with delta = 0: SLTrain initialises B = 0 because its sparse part S carries the
signal at step 0; without S every block weight is exactly zero, a saddle where every factor
gradient is 0.0 and nothing trains (3.618 bits/byte on every seed of stdlib-lm). Here both
factors are live from the start.

Init (`init`):
- "spectral" (default; Maestro's init, the practice GaLore and others follow): the layer's own
  fresh dense init W0 = U S V^T (float64 SVD) gives B = U_r S_r^1/2 and A = S_r^1/2 V_r^T, the best
  rank-r fit of W0; with `rescale` (default) both are multiplied by (||W0||_F / ||B A||_F)^1/2
  so the product has the dense init's scale (a rank-r truncation of a random matrix keeps only
  about r / min(m, n) of its energy, which would start the network with near-zero activations).
- "random": A Kaiming-uniform(a=sqrt 5) as nn.Linear draws it, B Gaussian with std
  (1 / sqrt(r)) x the dense init's std, so B A has the dense init's scale per entry.
Stored parameters per layer: r (m + n) (+ the original bias). Forward x A^T B^T: 2 r (m + n)
FLOPs per token, what the math needs, so no `ideal_flops` is declared.

Choices: targets every nn.Linear but the head (`skip_modules`, as sltrain), so the two compare
at equal stored parameters layer for layer; Linears owned by nn.MultiheadAttention or with tied
weights stay dense. The knob is r, one rank for every replaced layer, clamped to min(m, n).
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

INITS = ("spectral", "random")


def spectral_factors(weight: torch.Tensor, rank: int, rescale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B A the best rank-`rank` fit of `weight` (scaled to its Frobenius norm if `rescale`)."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    b, a = u[:, :rank] * root, root[:, None] * vh[:rank]
    if rescale:
        kept = float(s[:rank].square().sum().sqrt())
        if kept > 0:
            scale = math.sqrt(float(s.square().sum().sqrt()) / kept)
            b, a = b * scale, a * scale
    return b, a


def random_factors(weight: torch.Tensor, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A as nn.Linear's Kaiming-uniform init, B Gaussian so that B A has the dense init's std per entry."""
    m, n = weight.shape
    a = torch.empty(rank, n, dtype=torch.float64)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
    a_std = float(a.std()) or 1.0
    target = float(weight.detach().double().std())
    b = torch.randn(m, rank, generator=generator, dtype=torch.float64) * (target / (a_std * math.sqrt(rank)))
    return b, a


class LowRankLinear(nn.Module):
    """y = x A^T B^T + bias, A (r, in), B (out, r), both trainable."""

    def __init__(self, b: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.rank = b.shape
        self.in_features = a.shape[1]
        self.A = nn.Parameter(a.contiguous())
        self.B = nn.Parameter(b.contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """B A (not stored), for parents that read `.weight` directly."""
        return self.B @ self.A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, " \
               f"bias={self.bias is not None}"


class LowRankMethod(Method):
    name = "lowrank"
    kind = "train"
    knob = Knob("rank", 1, None)
    params = {"init": Param("spectral", choices=INITS, help='"spectral": SVD of the dense init (Maestro); '
                            '"random": A Kaiming, B Gaussian at the dense scale'),
              "rescale": Param(True, bool, help="spectral init: scale B A to the dense init's Frobenius norm"),
              "skip_modules": SKIP_MODULES}
    targets = ("Linear",)
    identity_at_init = False
    description = "Low-rank training: W = B A for every body Linear, both factors live at init (spectral from the dense init)."

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        if self.hparams["init"] not in INITS:
            raise PluginError(f"lowrank: init must be one of {list(INITS)}, got {self.hparams['init']!r}")
        check_suffixes(self.hparams["skip_modules"], "auto", method=self.name, hparam="skip_modules",
                       allow_empty=True)

    def select(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        chosen = body_linears(model, self.hparams["skip_modules"], self.name)
        if not chosen:
            raise PluginError("lowrank: no Linear left to replace once the head is skipped")
        return chosen

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(min(m.in_features, m.out_features) for _, m in self.select(model))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        gen = torch.Generator().manual_seed(int(ctx.seed) + 1)
        swaps = []
        for _, lin in self.select(model):
            r = min(rank, lin.in_features, lin.out_features)
            if self.hparams["init"] == "spectral":
                b, a = spectral_factors(lin.weight, r, bool(self.hparams["rescale"]))
            else:
                b, a = random_factors(lin.weight, r, gen)
            like = {"device": lin.weight.device, "dtype": lin.weight.dtype}
            swaps.append((lin, LowRankLinear(b.to(**like), a.to(**like), lin.bias)))
        return copy_swapping(model, swaps)


@hookimpl
def register_methods(register) -> None:
    register(LowRankMethod)
