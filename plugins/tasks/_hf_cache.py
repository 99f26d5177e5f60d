"""hf-text's file cache (features, the fitted probe, the base's outputs) and the check that a
model is still the one whose outputs were cached."""
from __future__ import annotations

import fcntl
import os
from typing import Callable

import torch
from torch import nn

from ._hf_model import cache_root


def file_cached(name: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A file under LOWDIM_BENCH_CACHE/hf-text/, computed by the first cell that needs it while
    the others wait on its lock; a torn or stale file is computed again. As the harness's base
    cache (run/cache.py): a cache that cannot be written costs the caching, never the cell."""
    folder = cache_root() / "hf-text"
    path = folder / f"{name}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{name}.lock", "w")
    except OSError:
        return compute()
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:
                path.unlink(missing_ok=True)
        out = compute()
        tmp = path.with_suffix(".tmp")
        try:
            torch.save(out, tmp)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
        return out


def state_token(model: nn.Module) -> tuple:
    """Changes when a parameter or buffer is replaced or written in place (autograd's version counter)."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))
