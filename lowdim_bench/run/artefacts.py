"""Saved artefacts: a cell's trained model, kept when a suite or an analysis asks (`save = ["model"]`).

Layout: <run>/artefacts/<cell key>/model.safetensors (safetensors, never pickle: loading a file
cannot run code). Written by the worker through a temporary file and a rename, so a killed cell
leaves no half file. Loading rebuilds the cell's structure (its base and the method at the knob
it reached, run/models.rebuild) and loads the weights into it; a method whose structure changes
during training (pruning to a smaller rank) must keep that structure in buffers of fixed shape,
or its artefacts cannot be loaded (the error says so).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from .. import api
from ..core.cells import Cell
from ..core.store import RunStore
from ..registry import Registry
from . import models

FOLDER = "artefacts"


def model_path(run_dir: str | Path, cell_key: str) -> Path:
    return Path(run_dir) / FOLDER / cell_key / "model.safetensors"


def save_trained(run_dir: str | Path, cell_key: str, model: nn.Module) -> int:
    """Write the model's state (parameters and persistent buffers); returns the file's bytes."""
    path = model_path(run_dir, cell_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    sparse = [n for n, t in model.state_dict().items() if isinstance(t, torch.Tensor) and t.layout != torch.strided]
    if sparse:
        raise ValueError(f"cannot save sparse tensors {sparse[:3]} as safetensors; store their values and indices "
                         "as dense buffers to make the model savable")
    on_cpu = all(t.device.type == "cpu" for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    save_model(model if on_cpu else copy.deepcopy(model).cpu(), str(tmp))
    os.replace(tmp, path)
    return path.stat().st_size


class RunArtefacts:
    """api.Artefacts over one run folder."""

    def __init__(self, run_dir: str | Path, registry: Registry, device: str = "cpu") -> None:
        self.dir = Path(run_dir)
        self.registry = registry
        self.device = torch.device(device)
        store = RunStore.open(self.dir)
        self.cells = {c.key: c for c in store.cells()}
        self.records = store.records()
        self._knobs = {r["cell_key"]: r.get("knob") for r in self.records if r.get("status") == "ok"}

    def list(self, what: str = "model") -> list[api.ArtefactInfo]:
        out = []
        for key, cell in self.cells.items():
            path = model_path(self.dir, key)
            if what == "model" and path.exists():
                out.append(api.ArtefactInfo(key, cell.shown_task, cell.shown_name, cell.kind, _size(cell), cell.seed,
                                            what, path, path.stat().st_size))
        return out

    def task(self, cell_key: str) -> api.Task:
        cell = self.cells[cell_key]
        return self.registry.task(cell.task).cls(**cell.task_options)

    def splits(self, cell_key: str) -> dict[str, Any]:
        cell = self.cells[cell_key]
        return self.task(cell_key).splits("target", cell.seed)

    def load_model(self, cell_key: str) -> nn.Module:
        cell = self.cells[cell_key]
        path = model_path(self.dir, cell_key)
        if not path.exists():
            raise FileNotFoundError(f"{path}: cell {cell.label} saved no model (add save = [\"model\"] to the suite)")
        _, _, model = models.rebuild(cell, self._knobs.get(cell_key), self.registry, self.device)
        missing, unexpected = load_model(model, str(path), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: the saved model does not fit the rebuilt structure of {cell.label} "
                             f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
        return model.eval()


def _size(cell: Cell) -> str:
    if cell.knob is not None:
        return f"knob {cell.knob:g}"
    if cell.budget is not None:
        return f"{cell.budget:g}"
    return "full"

