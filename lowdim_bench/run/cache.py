"""Base models cached per (task, options, stage, seed, task code version, data fingerprint).

Kept outside the repository, in LOWDIM_BENCH_CACHE (default ~/.cache/lowdim-bench). A file lock
makes parallel workers that need the same base train it once (core/filecache.py).
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..api import Task
from ..core import filecache
from ..core.environment import cache_dir


def base_key(task: Task, stage: str, seed: int, task_version: str) -> str:
    blob = json.dumps({"task": task.name, "options": task.options, "stage": stage, "seed": seed,
                       "version": task_version, "data": task.fingerprint()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_model(task: Task, stage: str, seed: int, task_version: str,
                 build: Callable[[], nn.Module], like: nn.Module | None = None,
                 notes: list[str] | None = None) -> tuple[nn.Module, bool]:
    """Return (model, was_cached). `build` trains the model when the cache has none. A cached
    state is loaded into `task.make_model(seed)`, or into a copy of `like` when given (family
    members keep their base's structure, which may not come from make_model).

    A cache that cannot be written (read-only, full, a file where the folder should be) costs
    the caching, never the cell: the model is built and used uncached, and `notes` says why."""
    path = cache_dir() / "base" / task.name / f"{base_key(task, stage, seed, task_version)}.pt"

    def load(p: Path) -> nn.Module:
        model = copy.deepcopy(like).cpu() if like is not None else task.make_model(seed)
        model.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
        return model

    return filecache.once(path, build, load, lambda model, p: torch.save(model.state_dict(), p), notes)
