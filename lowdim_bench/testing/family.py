"""The kit's own task family, so a merge method can be checked before any real family task exists.

Four Gaussian blobs in 8 dimensions and an MLP 8-32-4. Each member ("a", "b", "c") relabels the
blobs by its own permutation, so members fine-tuned from one base pull the head (and the body)
in different directions; `member_view` scores the merged body with the member's own head, as a
multi-task merge with task-specific heads is scored.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import api

PERMUTATIONS = {"a": [0, 1, 2, 3], "b": [1, 0, 3, 2], "c": [3, 2, 1, 0]}


class KitFamilyTask(api.Task):
    name = "kit-family"
    quality = api.Quality("accuracy", "fraction", True)
    params = {"n": api.Param(400, int, low=40, help="samples over all splits")}
    description = "Four Gaussian blobs; three members, each its own labelling (the kit's merge task)."

    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    def members(self) -> list[str]:
        return list(PERMUTATIONS)

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        member = stage.split(":", 1)[1] if stage.startswith("member:") else None
        if stage not in ("target", "source") and member not in PERMUTATIONS:
            raise api.PluginError(f"task {self.name!r}: unknown stage {stage!r}")
        g = torch.Generator().manual_seed(0)
        n = self.options["n"]
        y = torch.arange(n) % 4
        x = torch.randn(4, 8, generator=g)[y] * 2 + torch.randn(n, 8, generator=g)
        if member is not None:
            y = torch.tensor(PERMUTATIONS[member])[y]
        a, b = int(0.6 * n), int(0.8 * n)
        return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}

    def recipe(self, purpose: str) -> api.Recipe:
        return api.Recipe(steps=30, batch_size=32, lr=1e-2)

    def batches(self, split: Any, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        x, y = split
        while True:
            idx = torch.randint(len(y), (batch_size,), generator=generator)
            yield x[idx], y[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, split: Any) -> float:
        x, y = split
        with torch.no_grad():
            return float((model(x).argmax(-1) == y).float().mean())

    def member_view(self, merged: nn.Module, member: str, member_model: nn.Module) -> nn.Module:
        view = copy.deepcopy(merged)
        view[2] = copy.deepcopy(member_model[2])  # the member's own head on the merged body
        return view

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple:
        return (torch.randn(batch_size, 8, generator=torch.Generator().manual_seed(0)).to(device),)

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch_size, 8, generator=g).to(device), torch.randint(4, (batch_size,), generator=g).to(device)
