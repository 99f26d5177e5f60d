"""hf-text's file cache (features, the fitted probe, the base's outputs) and the check that a
model is still the one whose outputs were cached."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lowdim_bench.core import filecache
from lowdim_bench.core.environment import cache_dir


def file_cached(name: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A file under LOWDIM_BENCH_CACHE/hf-text/, computed once for every cell (core/filecache.py)."""
    path = cache_dir() / "hf-text" / f"{name}.pt"
    return filecache.once(path, compute, lambda p: torch.load(p, map_location="cpu", weights_only=True),
                          torch.save)[0]


def state_token(model: nn.Module) -> tuple:
    """Changes when a parameter or buffer is replaced or written in place (autograd's version counter)."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))
