"""Empty Textual's LRU caches so that reference counting frees what they held at once.

Why: an LRUCache keeps its entries in a ring of [prev, next, key, value] lists; its `clear()`
drops the dict and the head but leaves the ring, so every strip and segment the cache held
becomes cyclic garbage that only a full collection frees. Mid-run the app's tables and log left
~100k objects that way between two full collections, and each collection took 85-315 ms on the
2-core development machine (tui/idle_gc.py). Cutting the links first frees each entry as it goes.
"""
from __future__ import annotations

from typing import Any


def drop(cache: Any) -> None:
    for link in getattr(cache, "_cache", {}).values():
        if isinstance(link, list):
            link.clear()
    cache.clear()
