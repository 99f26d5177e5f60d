"""Empty Textual's LRU caches so that reference counting frees what they held at once.

Why: an LRUCache keeps its entries in a ring of [prev, next, key, value] lists; its `clear()`
drops the dict and the head but leaves the ring, so every strip and segment the cache held
becomes cyclic garbage that only a full collection frees. With the Results tab open during a run,
the table is emptied at every finished cell: traced over 40 s of the smoke suite (12 seeds, jobs 2),
the app's full collections met 8k, 15k, 27k and 38k dead objects without this (growing with the
table) and 9-11k with it. Cutting the links first frees each entry as it goes.
"""
from __future__ import annotations

from typing import Any


def drop(cache: Any) -> None:
    for link in getattr(cache, "_cache", {}).values():
        if isinstance(link, list):
            link.clear()
    cache.clear()
