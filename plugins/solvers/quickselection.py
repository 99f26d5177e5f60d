"""QuickSelection (Atashgahi et al., Machine Learning 2022) and its dense-autoencoder counterpart.

QuickSelection trains a sparse denoising autoencoder, input -> `hidden` sigmoid units -> linear
output, both layers truly sparse (plugins/solvers/_set_layer.py) and rewired by SET after every
epoch but the last; a feature's importance is its input neuron's strength, the sum of |w| over
its connections into the hidden layer. Top-k strength = the selected features.

The recipe is the reference code's (zahraatashgahi/QuickSelection, train_sparse_DAE.py):
epsilon 13, zeta 0.2, 1000 hidden units, batch 100, SGD lr 0.01 with momentum 0.9, weight decay
1e-5 applied as w <- w + v - wd w, input noise 0.2 N(0, 1) drawn once for the whole training set,
dropout 0.2 on the hidden layer (not rescaled during training, as in that code), loss
1/2 ||x_hat - x||^2 per sample (the gradient the reference back-propagates), features
standardised on the training set. `epochs` defaults to the reference's 100; suites lower it.
Float32 instead of the reference's float64.

`dense-ae` is the same autoencoder, recipe and importance with dense layers (nn.Linear's
initialisation): what the sparse training is supposed to save time and memory against.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lowdim_bench.api import PluginError
from lowdim_bench.hparams import Param

from ._contract import Solver, Stopwatch, Trace, measurement, no_trace
from ._set_layer import SparseLinear
from .selection import FeatureData, FeatureRanking, FeatureSelection, top_k

RECIPE = {
    "hidden": Param(1000, int, low=1, high=1_000_000, help="hidden units"),
    "epochs": Param(100, int, low=1, high=100_000, help="training epochs"),
    "batch_size": Param(100, int, low=1, high=1_000_000, help="minibatch size"),
    "lr": Param(0.01, float, low=0.0, high=10.0, help="SGD learning rate"),
    "momentum": Param(0.9, float, low=0.0, high=0.999, help="SGD momentum"),
    "weight_decay": Param(1e-5, float, low=0.0, high=1.0, help="decoupled weight decay per step"),
    "noise": Param(0.2, float, low=0.0, high=10.0, help="std of the Gaussian input corruption"),
    "dropout": Param(0.2, float, low=0.0, high=0.99, help="dropout rate on the hidden layer"),
}


def standardise(x: np.ndarray) -> torch.Tensor:
    mean, std = x.mean(0), x.std(0)
    return torch.from_numpy((x - mean) / np.where(std > 0, std, 1.0)).float()


class _AutoencoderSelector(Solver):
    problem = "feature-selection"
    knob = FeatureSelection.size

    def build(self, n_in: int, generator: torch.Generator) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def strength(self, encoder: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def rewire(self, layers: list[nn.Module], buffers: list[list[torch.Tensor]], generator: torch.Generator) -> None:
        """Between epochs (not after the last): SET for the sparse model, nothing for the dense one."""

    def solve(self, data: Any, size: int, generator: torch.Generator, trace: Trace = no_trace) -> FeatureRanking:
        if not isinstance(data, FeatureData):
            raise PluginError(f"solver {self.name!r}: expects feature-selection data, got {type(data).__name__}")
        n, d = data.shape
        k = self.check_size(size, 1, d)
        h = self.hparams
        watch = Stopwatch()
        with watch:
            x = standardise(data.x)
            noisy = x + h["noise"] * torch.randn(x.shape, generator=generator)
            enc, dec = self.build(d, generator)
            layers = [enc, dec]
            params = [list(layer.parameters()) for layer in layers]
            buffers = [[torch.zeros_like(p) for p in ps] for ps in params]
        keep = 1.0 - h["dropout"]
        for epoch in range(1, h["epochs"] + 1):
            total = 0.0
            with watch:
                order = torch.randperm(n, generator=generator)
                for start in range(0, n - h["batch_size"] + 1, h["batch_size"]):  # full batches, as the reference
                    idx = order[start:start + h["batch_size"]]
                    hid = torch.sigmoid(enc(noisy[idx]))
                    if h["dropout"] > 0:
                        hid = hid * (torch.rand(hid.shape, generator=generator) < keep)
                    loss = 0.5 * ((dec(hid) - x[idx]) ** 2).sum(1).mean()
                    grads = torch.autograd.grad(loss, [p for ps in params for p in ps])
                    with torch.no_grad():
                        flat = [(p, b) for ps, bs in zip(params, buffers) for p, b in zip(ps, bs)]
                        for (p, buf), g in zip(flat, grads):
                            buf.mul_(h["momentum"]).sub_(g, alpha=h["lr"])
                            p.add_(buf - h["weight_decay"] * p)
                    total += float(loss.detach())
                if epoch < h["epochs"]:
                    self.rewire(layers, buffers, generator)
            trace(epoch, seconds=watch.total, round_seconds=watch.last, loss=total / max(1, n // h["batch_size"]))
        with watch:
            importance = self.strength(enc).numpy().astype(float)
            chosen = top_k(importance, k)
        stored = sum(t.numel() * t.element_size() for layer in layers for t in (*layer.parameters(), *layer.buffers()))
        state = sum(b.numel() * b.element_size() for bs in buffers for b in bs)
        out = FeatureRanking(chosen, importance)
        out.extras = [measurement("model_bytes", stored, "B", False), measurement("optimizer_bytes", state, "B", False),
                      measurement("weights", sum(self.weight_count(layer) for layer in layers), "", False),
                      measurement("solve_seconds", watch.total, "s", False)]
        return out

    def weight_count(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def iterations(self) -> int:
        return self.hparams["epochs"]


class QuickSelection(_AutoencoderSelector):
    name = "quickselection"
    description = "sparse denoising autoencoder trained with SET; importance = input neuron strength"
    source = "Atashgahi et al. 2022, Quick and robust feature selection: the strength of energy-efficient sparse training for autoencoders"
    params = {**RECIPE,
              "epsilon": Param(13.0, float, low=0.01, high=1e6, help="Erdos-Renyi density: epsilon (n_in + n_out) connections"),
              "zeta": Param(0.2, float, low=0.0, high=1.0, help="fraction of weights SET removes and regrows per epoch")}

    def build(self, n_in, generator):
        e = self.hparams["epsilon"]
        return (SparseLinear(n_in, self.hparams["hidden"], e, generator),
                SparseLinear(self.hparams["hidden"], n_in, e, generator))

    def strength(self, encoder):
        return encoder.strength_in()

    def rewire(self, layers, buffers, generator):
        for layer, bufs in zip(layers, buffers):
            bufs[0] = layer.evolve(self.hparams["zeta"], generator, momentum=bufs[0])  # parameters(): values, bias

    def weight_count(self, layer):
        return layer.nnz


class DenseAutoencoder(_AutoencoderSelector):
    name = "dense-ae"
    description = "the same denoising autoencoder, dense; importance = input neuron strength"
    source = "QuickSelection's dense counterpart (Atashgahi et al. 2022)"
    params = dict(RECIPE)

    def build(self, n_in, generator):
        hidden = self.hparams["hidden"]
        enc, dec = nn.Linear(n_in, hidden), nn.Linear(hidden, n_in)
        with torch.no_grad():
            for layer in (enc, dec):  # nn.Linear's own init, drawn from the solver's generator
                bound = 1.0 / layer.in_features**0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        return enc, dec

    def strength(self, encoder):
        return encoder.weight.detach().abs().sum(0)

    def weight_count(self, layer):
        return layer.weight.numel()
