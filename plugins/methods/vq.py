"""Vector quantisers for a task's quantiser slot: `vq`, `vq-ema` and `simvq`. Knob: codebook size K.

Each method replaces every submodule named `quantizer` (the slot; plugins/tasks/vq_digits.py
states its contract) with its own quantiser of K codes of the slot's `dim` d. All three pick the
nearest code by squared Euclidean distance and pass gradients straight through (z + sg(q - z)).
- vq (van den Oord et al. 2017): codebook C (K, d) a parameter, U(-1/K, 1/K) as the VQ-VAE and
  taming code; loss ||sg(z) - q||^2 + beta ||z - sg(q)||^2, beta 0.25 (the commitment weight on
  the encoder term, as the paper; taming's "legacy" default puts beta on the codebook term).
- vq-ema (van den Oord et al. 2017 appendix; Razavi et al. 2019), as DeepMind's Sonnet
  VectorQuantizerEMA: C a buffer set each training step to the zero-debiased moving averages of
  the assigned latents' sums over their counts (decay 0.99, Laplace smoothing eps 1e-5), C init
  U(-sqrt(3/d), sqrt(3/d)); loss beta ||z - sg(q)||^2. Stored: C plus the EMA state, K d + K + K d
  floats and a step counter.
- simvq (Zhu et al. 2024): C (K, d) frozen at N(0, d^-1/2), the codes are C W^T + b for one
  trainable Linear(d, d); the search runs over C W^T + b; loss beta ||z - sg(q)||^2 +
  ||sg(z) - q||^2 (the official weights). Trainable d^2 + d; stored K d + d^2 + d.
  Official-code pitfall avoided (test_method_vq.py): decoding codes must go through C W^T + b,
  not the raw C; `decode` and the inference form both use the transformed codebook.

Forward cost per latent (FLOPs = 2 x MACs): the distance product 2 K d (vq, vq-ema, simvq);
simvq's training forward adds 2 K d^2 for C W^T once per call. `for_inference` gives simvq the
materialised C W^T + b as a plain codebook, so its deployed cost is vq's.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import copy_swapping

SLOT = "quantizer"
MAX_CODES = 4096


def nearest(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code for each row of z: argmin ||z||^2 - 2 z C^T + ||C||^2."""
    dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(1)[None, :]
    return dist.argmin(dim=1)


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return z + (q - z).detach()


class Quantiser(nn.Module):
    """Shared shape of the three: `codebook()` is what the search and `decode` read."""

    def __init__(self, size: int, dim: int, beta: float) -> None:
        super().__init__()
        self.codebook_size, self.dim, self.beta = size, dim, beta

    def codebook(self) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The vectors the decoder sees for these codes (the same as forward's quantised output)."""
        return F.embedding(codes, self.codebook())

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}"


class VQQuantiser(Quantiser):
    def __init__(self, size: int, dim: int, beta: float, generator: torch.Generator) -> None:
        super().__init__(size, dim, beta)
        self.embedding = nn.Parameter(torch.empty(size, dim).uniform_(-1.0 / size, 1.0 / size, generator=generator))

    def codebook(self) -> torch.Tensor:
        return self.embedding

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = nearest(z.detach(), self.embedding)
        q = F.embedding(codes, self.embedding)
        aux = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach()) if self.training else z.new_zeros(())
        return straight_through(z, q), aux, codes


class EMAQuantiser(Quantiser):
    """Sonnet's VectorQuantizerEMA: zero-debiased moving averages of the code counts and of the
    sums of the latents assigned to each code; the codebook is their Laplace-smoothed ratio."""

    def __init__(self, size: int, dim: int, beta: float, decay: float, eps: float, generator: torch.Generator) -> None:
        super().__init__(size, dim, beta)
        self.decay, self.eps = decay, eps
        limit = math.sqrt(3.0 / dim)  # VarianceScaling(1, fan_in, uniform) over d
        self.register_buffer("embedding", torch.empty(size, dim).uniform_(-limit, limit, generator=generator))
        self.register_buffer("cluster_hidden", torch.zeros(size))
        self.register_buffer("sum_hidden", torch.zeros(size, dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def codebook(self) -> torch.Tensor:
        return self.embedding

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes, self.codebook_size).to(z.dtype)
        self.updates += 1
        self.cluster_hidden.lerp_(onehot.sum(0), 1 - self.decay)
        self.sum_hidden.lerp_(onehot.t() @ z, 1 - self.decay)
        debias = 1 - self.decay ** int(self.updates)
        counts, sums = self.cluster_hidden / debias, self.sum_hidden / debias
        n = counts.sum()
        smoothed = (counts + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.copy_(sums / smoothed[:, None])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = nearest(z.detach(), self.embedding)
        q = F.embedding(codes, self.embedding).clone()  # the codes before this step's update, as Sonnet
        if self.training:
            self.ema_update(z.detach(), codes)
        aux = self.beta * F.mse_loss(z, q.detach()) if self.training else z.new_zeros(())
        return straight_through(z, q), aux, codes

    def extra_repr(self) -> str:
        return super().extra_repr() + f", decay={self.decay}, eps={self.eps}"


class SimVQQuantiser(Quantiser):
    def __init__(self, size: int, dim: int, beta: float, generator: torch.Generator) -> None:
        super().__init__(size, dim, beta)
        self.register_buffer("frozen", torch.randn(size, dim, generator=generator) * dim ** -0.5)
        self.proj = nn.Linear(dim, dim)
        bound = 1 / math.sqrt(dim)  # nn.Linear's own init, drawn from our generator
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.proj.weight, a=math.sqrt(5), generator=generator)
            self.proj.bias.uniform_(-bound, bound, generator=generator)

    def codebook(self) -> torch.Tensor:
        """The effective codebook C W^T + b (recomputed each call: W trains)."""
        return self.proj(self.frozen)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        book = self.codebook()
        codes = nearest(z.detach(), book.detach())
        q = F.embedding(codes, book)
        aux = self.beta * F.mse_loss(z, q.detach()) + F.mse_loss(q, z.detach()) if self.training else z.new_zeros(())
        return straight_through(z, q), aux, codes


class FixedCodebookQuantiser(Quantiser):
    """Inference form of a quantiser whose codebook is a function of its weights: the codebook materialised."""

    def __init__(self, codebook: torch.Tensor, beta: float) -> None:
        super().__init__(codebook.shape[0], codebook.shape[1], beta)
        self.register_buffer("embedding", codebook.detach().clone())

    def codebook(self) -> torch.Tensor:
        return self.embedding

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = nearest(z.detach(), self.embedding)
        return straight_through(z, F.embedding(codes, self.embedding)), z.new_zeros(()), codes


def slots(model: nn.Module, method: str) -> list[nn.Module]:
    found = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == SLOT]
    if not found:
        raise PluginError(f"method {method!r} replaces a quantiser slot (a submodule named {SLOT!r}); "
                          f"this model has none")
    for m in found:
        if not isinstance(getattr(m, "dim", None), int):
            raise PluginError(f"method {method!r}: the {SLOT!r} slot must have an int attribute `dim`")
    return found


class _VQBase(Method):
    kind = "train"
    knob = Knob("codebook_size", 2, MAX_CODES, help="codes K in the codebook")
    targets = (SLOT,)
    identity_at_init = False

    def build(self, size: int, dim: int, generator: torch.Generator) -> Quantiser:
        raise NotImplementedError

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if size is None or float(size) != int(size) or not 2 <= int(size) <= MAX_CODES:
            raise PluginError(f"method {self.name!r}: codebook_size must be an integer in [2, {MAX_CODES}], "
                              f"got {size!r}")
        gen = torch.Generator().manual_seed(int(ctx.seed))
        anchor = next(model.parameters(), None)
        device = anchor.device if anchor is not None else torch.device("cpu")
        swaps = [(slot, self.build(int(size), slot.dim, gen).to(device)) for slot in slots(model, self.name)]
        return copy_swapping(model, swaps)


class VQMethod(_VQBase):
    name = "vq"
    params = {"beta": Param(0.25, float, low=0.0, help="commitment weight on ||z - sg(q)||^2")}
    description = "VQ-VAE quantiser: learnt codebook, nearest code, straight-through, codebook + beta commitment loss."

    def build(self, size: int, dim: int, generator: torch.Generator) -> Quantiser:
        return VQQuantiser(size, dim, self.hparams["beta"], generator)


class VQEMAMethod(_VQBase):
    name = "vq-ema"
    params = {
        "beta": Param(0.25, float, low=0.0, help="commitment weight on ||z - sg(q)||^2"),
        "decay": Param(0.99, float, low=0.0, high=1.0, help="EMA decay of counts and sums"),
        "eps": Param(1e-5, float, low=0.0, help="Laplace smoothing of the counts"),
    }
    description = "VQ-VAE quantiser with the codebook moved by exponential moving averages (no codebook gradient)."

    def build(self, size: int, dim: int, generator: torch.Generator) -> Quantiser:
        h = self.hparams
        return EMAQuantiser(size, dim, h["beta"], h["decay"], h["eps"], generator)


class SimVQMethod(_VQBase):
    name = "simvq"
    params = {"beta": Param(0.25, float, low=0.0, help="commitment weight on ||z - sg(q)||^2")}
    description = "SimVQ: frozen random codebook C reparameterised by one Linear (codes C W^T + b)."

    def build(self, size: int, dim: int, generator: torch.Generator) -> Quantiser:
        return SimVQQuantiser(size, dim, self.hparams["beta"], generator)

    def for_inference(self, model: nn.Module) -> nn.Module:
        """The transformed codebook materialised once: deployed cost is a plain lookup's."""
        swaps = [(m, FixedCodebookQuantiser(m.codebook(), m.beta)) for m in model.modules()
                 if isinstance(m, SimVQQuantiser)]
        return copy_swapping(model, swaps) if swaps else model


@hookimpl
def register_methods(register) -> None:
    for cls in (VQMethod, VQEMAMethod, SimVQMethod):
        register(cls)
