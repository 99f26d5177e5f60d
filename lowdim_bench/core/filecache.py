"""A file computed once and shared by every process that needs it.

The first process computes it while the others wait on its lock; a torn or stale file is computed
again; a cache that cannot be written costs the caching, never the caller. Used for base models
(run/cache.py) and for hf-text's features, probe and base outputs (plugins/tasks/_hf_cache.py).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def once(path: Path, compute: Callable[[], T], load: Callable[[Path], T], save: Callable[[T, Path], None],
         notes: list[str] | None = None) -> tuple[T, bool]:
    """(the value, whether it came from the file). `notes` hears why a file could not be used."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w")
    except OSError as e:
        if notes is not None:
            notes.append(f"cache {path.parent} not writable ({e.strerror or e}): computed uncached")
        return compute(), False
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            try:
                return load(path), True
            except Exception:
                path.unlink(missing_ok=True)  # a torn or stale file: compute it again
        value = compute()
        tmp = path.with_suffix(".tmp")
        try:
            save(value, tmp)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if notes is not None:
                notes.append(f"cache {path} not written ({e.strerror or e}): the next caller computes it again")
        return value, False
