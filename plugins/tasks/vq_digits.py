"""vq-digits: a small VQ-VAE on scikit-learn's 8x8 digits, for vector-quantisation methods.

The data and split are digits-mlp's (the fixed stratified 60/20/20 split; only the "target"
stage, the digits as shipped, images (n, 1, 8, 8) in [0, 1]). Quality: reconstruction MSE per
pixel on the test split (lower is better). The `codebook` metric adds utilisation and perplexity
of the codes (from `codes()` below).

Model (names are the contract):
  encoder    Conv(1 -> w, 3, pad 1), ReLU, Conv(w -> w, 4, stride 2, pad 1), ReLU, Conv(w -> dim, 1)
             -> a 4 x 4 grid of `dim`-vectors per image (16 latents)
  quantizer  the quantiser slot (below)
  decoder    Conv(dim -> w, 1), ReLU, ConvTranspose(w -> w, 4, stride 2, pad 1), ReLU, Conv(w -> 1, 3, pad 1)

The quantiser slot: the model's submodule named `quantizer`. It has an int attribute `dim` and
maps latents z (N, dim) to (z_q (N, dim), aux_loss (a scalar the task adds to its loss), codes
(N,) int64, or None when it has no codebook). In training mode z_q must pass gradients to z.
A quantiser with a codebook also has `codebook_size` (int) and `decode(codes) -> (N, dim)`, the
vectors the decoder sees for those codes. A VQ method replaces the slot (found by its name) with
its own quantiser: vq, vq-ema and simvq in plugins/methods/vq.py. The task's own slot quantises
nothing (`ContinuousSlot`), so `dense` here is the continuous autoencoder: the reconstruction a
codebook can at best approach.

Why 16 latents per image: the test split then holds 5,760 latent vectors, enough to see every
code of a 512- or 1024-entry codebook used; with 4 (a 2 x 2 grid) a 512-code book could not be.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import Param, PluginError, Quality, Recipe, Task
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench_builtin.tasks.digits_mlp import (DigitsSplit, _load_digits, digits_fingerprint, index_stream,
                                                    model_device, split_indices)

SLOT = "quantizer"


class ContinuousSlot(nn.Module):
    """The empty quantiser slot: z passes through, no codes, no extra loss."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        return z, z.new_zeros(()), None

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class VQAutoencoder(nn.Module):
    """encoder -> quantizer (per latent vector) -> decoder; forward returns the reconstruction."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(width, width, 4, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(width, dim, 1))
        self.quantizer: nn.Module = ContinuousSlot(dim)
        self.decoder = nn.Sequential(nn.Conv2d(dim, width, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(width, 1, 3, padding=1))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, dim, H, W) latents through the slot, one vector per position."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        q, aux, codes = self.quantizer(flat)
        return q.reshape(b, h, w, d).permute(0, 3, 1, 2), aux, codes

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        q, aux, codes = self.quantize(self.encoder(x))
        return self.decoder(q), aux, codes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)[0]


class VQDigitsTask(Task):
    name = "vq-digits"
    quality = Quality(name="recon_mse", unit="MSE", higher_is_better=False)
    params = {
        "width": Param(32, int, low=1, help="channels of the encoder and decoder convolutions"),
        "dim": Param(16, int, low=1, help="dimension of each latent vector (the codebook's d)"),
        "steps": Param(600, int, low=0, help="training steps (train kind)"),
        "batch_size": Param(64, int, low=1, help="images per step"),
        "lr": Param(2e-3, float, low=0.0, help="AdamW learning rate (train kind)"),
        "finetune_steps": Param(200, int, low=0, help="steps of the finetune recipe"),
        "finetune_lr": Param(1e-3, float, low=0.0, help="learning rate of the finetune recipe"),
        "recover_steps": Param(100, int, low=0, help="steps of the recover recipe (compress)"),
        "recover_lr": Param(1e-3, float, low=0.0, help="learning rate of the recover recipe"),
    }
    description = ("VQ-VAE on scikit-learn's 8x8 digits: conv encoder to a 4x4 grid of dim-vectors, a quantiser slot "
                   "named `quantizer` (VQ methods replace it; the task's own passes z through), conv decoder. "
                   "digits-mlp's split. Quality: test reconstruction MSE per pixel.")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._cache: dict[str, DigitsSplit] | None = None

    def fingerprint(self) -> str:
        return digits_fingerprint("vq-digits/v1")

    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return VQAutoencoder(int(self.options["width"]), int(self.options["dim"]))

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        if stage != "target":
            raise PluginError(f"task {self.name!r}: unknown stage {stage!r}; known: ['target'] (no adapt source)")
        if self._cache is None:
            x, y = _load_digits()
            parts = split_indices(y)
            self._cache = {part: DigitsSplit(torch.from_numpy(x[idx].copy()).view(-1, 1, 8, 8),
                                             torch.from_numpy(y[idx].copy())) for part, idx in parts.items()}
        return dict(self._cache)

    def recipe(self, purpose: str) -> Recipe:
        o = self.options
        table = {"pretrain": ("steps", "lr"), "finetune": ("finetune_steps", "finetune_lr"),
                 "recover": ("recover_steps", "recover_lr")}
        if purpose not in table:
            raise PluginError(f"task {self.name!r}: unknown recipe purpose {purpose!r}; known: {sorted(table)}")
        steps, lr = table[purpose]
        return Recipe(steps=int(o[steps]), batch_size=int(o["batch_size"]), lr=float(o[lr]))

    def batches(self, split: DigitsSplit, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        for idx in index_stream(len(split), batch_size, generator):
            yield split.x[idx], split.y[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, _ = self.to_device(batch, model_device(model))
        recon, aux, _ = model.reconstruct(x)
        return F.mse_loss(recon, x) + aux

    def evaluate(self, model: nn.Module, split: DigitsSplit) -> float:
        total = 0.0
        for x, recon, _ in self._passes(model, split):
            total += float(F.mse_loss(recon, x, reduction="sum"))
        return total / split.x.numel()

    def codes(self, model: nn.Module, split: DigitsSplit) -> tuple[torch.Tensor, int] | None:
        """(every latent's code over the split, codebook size), or None when the slot has no codebook."""
        size = getattr(model.get_submodule(SLOT), "codebook_size", None)
        if size is None:
            return None
        out = [codes for *_, codes in self._passes(model, split)]
        return torch.cat(out).cpu(), int(size)

    def _passes(self, model: nn.Module, split: DigitsSplit):
        """(inputs, reconstruction, codes) per chunk of the split, in eval mode without gradients."""
        was_training = model.training
        device = model_device(model)
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(split), 512):
                    x = split.x[start:start + 512].to(device)
                    recon, _, codes = model.reconstruct(x)
                    yield x, recon, codes
        finally:
            model.train(was_training)

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(0)
        return (torch.rand(batch_size, 1, 8, 8, generator=g).to(device),)

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch_size, 1, 8, 8, generator=g)
        return x.to(device), torch.randint(0, 10, (batch_size,), generator=g).to(device)


@hookimpl
def register_tasks(register) -> None:
    register(VQDigitsTask)
