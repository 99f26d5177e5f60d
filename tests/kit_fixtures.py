"""Deliberately broken plugins for the conformance kit's own tests, each with one known bug,
beside a correct low-rank adapter (TinyLora) the kit must pass.

Written only against the public API, as a third-party author would.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import Knob, Measurement, Method, Metric, Quality, Recipe, Task


class Adapter(nn.Module):
    """y = base(x) + B A x, A Kaiming-uniform, B zero: the identity at init."""

    def __init__(self, base: nn.Linear, rank: int, gen: torch.Generator, zero_b: bool = True) -> None:
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5), generator=gen)
        b = torch.zeros(base.out_features, rank)
        if not zero_b:
            nn.init.kaiming_uniform_(b, a=math.sqrt(5), generator=gen)
        self.B = nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.A), self.B)


def _wrap(model: nn.Module, make) -> nn.Module:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, make(child))
        else:
            _wrap(child, make)
    return model


class TinyLora(Method):
    """A correct low-rank adapter: the control every check must pass."""

    name = "kit-tiny-lora"
    kind = "adapt"
    knob = Knob("rank", 1, 16)
    identity_at_init = True
    description = "correct low-rank adapter (kit control)"

    def apply(self, model: nn.Module, size: float | None, ctx) -> nn.Module:
        new = copy.deepcopy(model)
        new.requires_grad_(False)
        gen = torch.Generator().manual_seed(ctx.seed)
        return _wrap(new, lambda lin: Adapter(lin, int(size), gen))


class MutatesBase(TinyLora):
    """Freezes the caller's model in place before copying it (flips the base's requires_grad)."""

    name = "kit-mutates-base"

    def apply(self, model, size, ctx):
        model.requires_grad_(False)
        new = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(ctx.seed)
        return _wrap(new, lambda lin: Adapter(lin, int(size), gen))


class SharesBase(Method):
    """Wraps the very modules it was given (no copy): training the result changes the base."""

    name = "kit-shares-base"
    kind = "train"
    description = "a wrapper without a copy (broken)"

    def apply(self, model, size, ctx):
        return nn.Sequential(*model.children())


class Shrinking(TinyLora):
    """Its adapter rank falls as the knob rises: the budget search cannot bisect on it."""

    name = "kit-shrinking"

    def apply(self, model, size, ctx):
        return super().apply(model, 17 - int(size), ctx)


class NotIdentity(TinyLora):
    """Says identity_at_init, but initialises B randomly, so the model changes at step 0."""

    name = "kit-not-identity"

    def apply(self, model, size, ctx):
        new = copy.deepcopy(model)
        new.requires_grad_(False)
        gen = torch.Generator().manual_seed(ctx.seed)
        return _wrap(new, lambda lin: Adapter(lin, int(size), gen, zero_b=False))


class HiddenAdapter(nn.Module):
    """Adapter factors kept as plain tensor attributes: trained, but no counter sees them."""

    def __init__(self, base: nn.Linear, rank: int, gen: torch.Generator) -> None:
        super().__init__()
        self.base = base
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
        self.factors = [a.requires_grad_(True), torch.zeros(base.out_features, rank, requires_grad=True)]

    def forward(self, x):
        a, b = self.factors
        return self.base(x) + F.linear(F.linear(x, a), b)


class UnderReports(TinyLora):
    """Trains hidden factors through its own optimizer: count_params reports 0 trainable."""

    name = "kit-under-reports"

    def apply(self, model, size, ctx):
        new = copy.deepcopy(model)
        new.requires_grad_(False)
        gen = torch.Generator().manual_seed(ctx.seed)
        return _wrap(new, lambda lin: HiddenAdapter(lin, int(size), gen))

    def configure_optimizer(self, model, lr, weight_decay):
        tensors = [t for m in model.modules() if isinstance(m, HiddenAdapter) for t in m.factors]
        return torch.optim.AdamW(tensors, lr=lr, weight_decay=weight_decay)


class MaskedLinear(nn.Module):
    """A 'sparse' layer stored as a dense weight that is zero off its support, multiplied dense."""

    def __init__(self, base: nn.Linear, density: float, gen: torch.Generator) -> None:
        super().__init__()
        mask = torch.rand(base.weight.shape, generator=gen) < density
        self.register_buffer("mask", mask)
        w = torch.empty(base.weight.shape)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
        self.weight = nn.Parameter(w * mask)
        self.bias = nn.Parameter(base.bias.detach().clone())

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class SparseCountedDense(Method):
    """Random sparse training whose sparse weights are dense tensors full of zeros."""

    name = "kit-sparse-dense"
    kind = "train"
    knob = Knob("density", 0.05, 0.3, integer=False)
    description = "masked dense weights (broken)"

    def apply(self, model, size, ctx):
        new = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(ctx.seed)
        return _wrap(new, lambda lin: MaskedLinear(lin, float(size), gen))


class GlobalRng(TinyLora):
    """Draws its init from the global RNG: the model at a knob depends on what ran before."""

    name = "kit-global-rng"

    def apply(self, model, size, ctx):
        new = copy.deepcopy(model)
        new.requires_grad_(False)
        return _wrap(new, lambda lin: Adapter(lin, int(size), torch.default_generator))


# ---- tasks ------------------------------------------------------------------------------

class BlobTask(Task):
    """Three Gaussian blobs in 8 dimensions, an MLP 8-32-3: a correct tiny task."""

    name = "kit-blobs"
    quality = Quality("accuracy", "fraction", True)
    defaults = {"n": 300}
    description = "three Gaussian blobs (kit control)"

    def make_model(self, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def data(self, stage):
        g = torch.Generator().manual_seed(0 if stage == "target" else 1)
        y = torch.arange(self.options["n"]) % 3
        x = torch.randn(3, 8, generator=g)[y] * 2 + torch.randn(len(y), 8, generator=g)
        return x, y

    def cut(self, x, y):
        a, b = int(0.6 * len(y)), int(0.8 * len(y))
        return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}

    def splits(self, stage, seed):
        return self.cut(*self.data(stage))

    def recipe(self, purpose):
        return Recipe(steps=20, batch_size=16, lr=1e-2)

    def batches(self, split, batch_size, generator) -> Iterator[Any]:
        x, y = split
        while True:
            idx = torch.randint(len(y), (batch_size,), generator=generator)
            yield x[idx], y[idx]

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model, split):
        x, y = split
        with torch.no_grad():
            return float((model(x).argmax(-1) == y).float().mean())

    def example_inputs(self, batch_size, device):
        return (torch.randn(batch_size, 8, generator=torch.Generator().manual_seed(0)).to(device),)

    def example_batch(self, batch_size, device):
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch_size, 8, generator=g).to(device), torch.randint(3, (batch_size,), generator=g).to(device)


class LeakyTask(BlobTask):
    """Its validation split repeats part of the training split."""

    name = "kit-leaky"

    def cut(self, x, y):
        parts = super().cut(x, y)
        parts["val"] = (x[:40], y[:40])
        return parts


class UnseededTask(BlobTask):
    """make_model draws from the global RNG without seeding it."""

    name = "kit-unseeded"

    def make_model(self, seed):
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


class NoDirectionTask(BlobTask):
    name = "kit-no-direction"
    quality = Quality("accuracy", "", None)  # type: ignore[arg-type]


# ---- metrics ------------------------------------------------------------------------------

class DepthMetric(Metric):
    """Number of Linear layers: a correct metric."""

    name = "kit-depth"
    description = "Linear layers in the model"

    def measure(self, ctx):
        return [Measurement("linear_layers", sum(isinstance(m, nn.Linear) for m in ctx.model.modules()), "layers")]


class UnitlessMetric(DepthMetric):
    name = "kit-unitless"

    def measure(self, ctx):
        return [Measurement("linear_layers", 3, "")]


class DictMetric(DepthMetric):
    name = "kit-dict"

    def measure(self, ctx):
        return [{"metric": "linear_layers", "value": 3, "unit": "layers"}]


# ---- a fresh virtual environment, shared by the slow install tests -----------------------

_VENV: dict[str, Any] = {}
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def fresh_venv(folder) -> "Any":
    """A new venv (python -m venv) with torch 2.13.0 and this project installed editable, plus
    pytest; made once per test session and shared (test_scaffold, test_example_plugin)."""
    import subprocess
    import sys

    if "path" not in _VENV:
        venv = folder / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        for args in (["torch==2.13.0"], ["-e", str(ROOT), "pytest"]):
            r = subprocess.run(pip + args, capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                raise RuntimeError(f"pip install {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        _VENV["path"] = venv
    return _VENV["path"]
