"""Plugins for harness tests: a tiny task and methods that fail in each way a cell can fail.

Loaded in worker processes through LOWDIM_BENCH_PLUGIN_MODULES=fakeplugins (tests/ is on the
path the workers inherit).
"""
from __future__ import annotations

import copy
import os
import signal
import time
from typing import Any, Iterator

import torch
from torch import nn

from lowdim_bench.api import Knob, Method, Quality, Recipe, Task
from lowdim_bench.hookspecs import hookimpl


class TinyTask(Task):
    name = "tiny"
    quality = Quality("accuracy", "fraction", True)
    defaults = {"n": 384, "steps": 30}
    description = "Three Gaussian blobs in 8 dimensions; an MLP 8-16-3."

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0 if stage == "target" else 1)
        centres = torch.randn(3, 8, generator=g) * 2
        y = torch.arange(self.options["n"]) % 3
        x = centres[y] + torch.randn(len(y), 8, generator=g)
        n = len(y)
        cut = [int(0.7 * n), int(0.85 * n)]
        return {"train": (x[:cut[0]], y[:cut[0]]), "val": (x[cut[0]:cut[1]], y[cut[0]:cut[1]]),
                "test": (x[cut[1]:], y[cut[1]:])}

    def recipe(self, purpose: str) -> Recipe:
        return Recipe(steps=self.options["steps"], batch_size=32, lr=1e-2, log_every=10)

    def batches(self, split, batch_size: int, generator: torch.Generator) -> Iterator:
        x, y = split
        while True:
            idx = torch.randint(len(y), (batch_size,), generator=generator)
            yield x[idx], y[idx]

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model, split) -> float:
        x, y = split
        with torch.no_grad():
            return float((model(x).argmax(-1) == y).float().mean())

    def example_inputs(self, batch_size: int, device) -> tuple:
        return (torch.randn(batch_size, 8, device=device),)

    def example_batch(self, batch_size: int, device):
        return torch.randn(batch_size, 8, device=device), torch.randint(3, (batch_size,), device=device)


class Head(Method):
    """Trains only the last layer: a real knob-free method for the happy path."""
    name = "fake-head"
    kind = "adapt"

    def apply(self, model, size, ctx):
        m = copy.deepcopy(model)
        for p in m.parameters():
            p.requires_grad_(False)
        for p in m[-1].parameters():
            p.requires_grad_(True)
        return m


class Width(Method):
    """Keeps the first `width` hidden units: a knob whose parameter count grows with it."""
    name = "fake-width"
    kind = "compress"
    knob = Knob("width", 1, 16)

    def apply(self, model, size, ctx):
        w = int(size)
        m = copy.deepcopy(model)
        first, last = nn.Linear(8, w), nn.Linear(w, 3)
        with torch.no_grad():
            first.weight.copy_(m[0].weight[:w]); first.bias.copy_(m[0].bias[:w])
            last.weight.copy_(m[2].weight[:, :w]); last.bias.copy_(m[2].bias)
        return nn.Sequential(first, nn.ReLU(), last)


class Boom(Method):
    name = "fake-boom"
    kind = "adapt"

    def apply(self, model, size, ctx):
        raise RuntimeError("boom on purpose")


class NaNLoss(Head):
    name = "fake-nan"

    def extra_loss(self, model):
        return torch.tensor(float("nan"))


class Hang(Method):
    name = "fake-hang"
    kind = "adapt"

    def apply(self, model, size, ctx):
        time.sleep(120)


class Die(Method):
    """Dies the way the kernel's out-of-memory killer kills."""
    name = "fake-die"
    kind = "adapt"

    def apply(self, model, size, ctx):
        os.kill(os.getpid(), signal.SIGKILL)


class OutOfMemory(Method):
    name = "fake-oom"
    kind = "adapt"

    def apply(self, model, size, ctx):
        raise MemoryError("could not allocate 1 TiB")


class RealOutOfMemory(Method):
    """Runs out of memory for real: the address space is capped a little above what the worker
    uses, then apply allocates until torch cannot, holding everything in its frame."""
    name = "fake-real-oom"
    kind = "adapt"

    def apply(self, model, size, ctx):
        import re
        import resource

        vm = int(re.search(r"VmSize:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
        hold = []
        while True:
            hold.append(torch.ones(4 * 2**20))  # 16 MiB each, written


class Mutator(Method):
    name = "fake-mutator"
    kind = "adapt"

    def apply(self, model, size, ctx):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        return copy.deepcopy(model)


class Slow(Head):
    """A happy method that takes a while, so a test can kill the run mid-way."""
    name = "fake-slow"

    def apply(self, model, size, ctx):
        time.sleep(float(os.environ.get("FAKE_SLOW_SECONDS", "1.5")))
        return super().apply(model, size, ctx)


@hookimpl
def register_tasks(register):
    register(TinyTask)


@hookimpl
def register_methods(register):
    for cls in (Head, Width, Boom, NaNLoss, Hang, Die, OutOfMemory, RealOutOfMemory, Mutator, Slow):
        register(cls)
