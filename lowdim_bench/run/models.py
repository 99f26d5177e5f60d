"""The models a cell starts from, and rebuilding a cell's model after the fact.

Why here and not in the worker: the worker, the interleaved-latency pass and the artefact
loader all need "the model this cell applied its method to" and "the method's model at the
knob the cell reached"; one module makes them agree.

- train cells start from the task's fresh model (`make_model(seed)`, seeded);
- adapt and head cells from a base for the "source" stage, compress (and dense references)
  from one for "target": `Task.pretrained(stage, seed)` when the task has one, else the model
  trained with the "pretrain" recipe and cached;
- merge cells from the "source" base, plus each member of the task's family fine-tuned from it
  with the "finetune" recipe on the member's stage, cached like bases.
"""
from __future__ import annotations

import copy
import random
from typing import Any, Callable

import torch
from torch import nn

from .. import api
from ..core.cells import Cell
from ..registry import Registry
from . import budget as budget_mod
from . import cache
from .train import train

Progress = Callable[[str], Callable[[int, int, float], None]]
QUIET: Progress = lambda stage: (lambda step, steps, loss: None)  # noqa: E731


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def base_stage(kind: str) -> str:
    """Which stage a cell's base model comes from: adapt, head and merge start from the source stage."""
    return "source" if kind in ("adapt", "head", "merge") else "target"


def base_model(task: api.Task, stage: str, seed: int, version: str, device: torch.device,
               progress: Progress = QUIET) -> tuple[nn.Module, dict[str, Any]]:
    """(the stage's base model in eval mode on `device`, what to say of it in the cell's config)."""
    ready = task.pretrained(stage, seed)
    if ready is not None:
        return ready.to(device).eval(), {"stage": stage, "pretrained": True}

    def build() -> nn.Module:
        seed_everything(seed)
        model = task.make_model(seed).to(device)
        splits = task.splits(stage, seed)
        train(model, task, None, splits["train"], task.recipe("pretrain"), seed, device, progress(f"base[{stage}]"))
        return model.cpu()

    notes: list[str] = []
    model, hit = cache.cached_model(task, stage, seed, version, build, notes=notes)
    return model.to(device).eval(), {"stage": stage, "cached": hit, **({"cache_notes": notes} if notes else {})}


def start_model(task: api.Task, cell: Cell, version: str, device: torch.device,
                progress: Progress = QUIET) -> tuple[nn.Module, dict[str, Any]]:
    if cell.kind == "train":
        seed_everything(cell.seed)
        return task.make_model(cell.seed).to(device), {"stage": "init"}
    return base_model(task, base_stage(cell.kind), cell.seed, version, device, progress)


def members(task: api.Task, base: nn.Module, seed: int, version: str, device: torch.device,
            progress: Progress = QUIET) -> dict[str, nn.Module]:
    """The family's members, each fine-tuned from `base` on its own stage (cached)."""
    out: dict[str, nn.Module] = {}
    for name in task.members():
        stage = f"member:{name}"

        def build(stage: str = stage) -> nn.Module:
            seed_everything(seed)
            model = copy.deepcopy(base).to(device)
            for p in model.parameters():
                p.requires_grad_(True)
            splits = task.splits(stage, seed)
            train(model, task, None, splits["train"], task.recipe("finetune"), seed, device, progress(stage))
            return model.cpu()

        model, _ = cache.cached_model(task, stage, seed, version, build, like=base)
        out[name] = model.to(device).eval()
    return out


def rebuild(cell: Cell, knob: float | None, registry: Registry, device: torch.device,
            run_id: str = "") -> tuple[api.Task, api.Method, nn.Module]:
    """The cell's task, method and the method's model at `knob` (weights as applied, untrained).

    Latency does not depend on weight values, only on structure (shapes, ranks, a sparse
    support), and every method's structure is fixed by (seed, knob); trained weights are loaded
    into this structure by the artefact loader."""
    task = registry.task(cell.task).cls(**cell.task_options)
    method = registry.method(cell.method).cls(**cell.hparams)
    version = registry.task(cell.task).code_version
    start, _ = start_model(task, cell, version, device)
    family = members(task, start, cell.seed, version, device) if cell.kind == "merge" else {}
    split = task.splits("target", cell.seed)["train"] if cell.kind != "merge" else None
    ctx = api.ApplyContext(seed=cell.seed, device=device, task=task, generator=torch.Generator().manual_seed(cell.seed),
                           kind=cell.kind, members=family,
                           calibration=lambda: calibration(task, split, cell.seed, device))
    k = knob if method.knob is not None else None
    sized = budget_mod.apply_sized(method, start, cell.kind, None, k, 1, ctx)
    return task, method, sized.model.to(device)


def checksum(model: nn.Module) -> tuple:
    """A cheap fingerprint of every float tensor, to catch a method that mutates its input."""
    with torch.no_grad():
        return tuple((n, float(t.double().sum()), t.requires_grad if isinstance(t, nn.Parameter) else None)
                     for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_floating_point())


def calibration(task: api.Task, split: Any, seed: int, device: torch.device, n_batches: int = 8):
    """Model inputs from the training split, for methods that calibrate (AFM, activation-aware SVD)."""
    gen = torch.Generator().manual_seed(seed + 1)
    it = task.batches(split, 64, gen)
    for _ in range(n_batches):
        yield task.model_inputs(task.to_device(next(it), device))
