"""Full garbage collections while nobody waits, not inside the frame of a key or a tab switch.

Why: Textual drops its render caches as cyclic garbage (its LRU caches are rings of links that
hold every rendered strip; each restyle of a widget leaves a virtual style node of ~150 objects
per component class behind, nine for a table). During a smoke run one full collection met
~45-120k live and ~70-110k dead objects and took 85-315 ms on the 2-core development machine,
inside whatever frame it hit: it was the slowest tab switch of every bench run (docs/app.md,
"Measured responsiveness"). So the interpreter's own full collections are off (young ones stay),
and the app's one-second tick calls `IdleCollector.tick`, which runs one when no key or mouse event
came for IDLE_S, as many young collections have passed as would have triggered one (CPython's
default, 10) and the last is MIN_GAP_S ago. Even then a collection takes 50-140 ms mid-run (the
live objects, ~55k, cost more than the garbage; traced), so the gap keeps the odds that a key lands
in one low. After MAX_DEFER_S without a pause it runs regardless, so memory stays bounded.
"""
from __future__ import annotations

import gc
import time
from typing import Callable

YOUNG_THRESHOLDS = (700, 10)  # CPython's defaults for the first two generations
NEVER = 1 << 30  # a third threshold the count never reaches: no automatic full collection
FULL_AFTER = 10  # young (second-generation) collections since the last full one: CPython's default
IDLE_S = 1.0
MIN_GAP_S = 10.0
MAX_DEFER_S = 30.0


class IdleCollector:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_input = self.last_full = clock()

    def start(self) -> None:
        """Hand the full collections to `tick` and switch the collector on (the app keeps it off
        until its first frame)."""
        gc.set_threshold(*YOUNG_THRESHOLDS, NEVER)
        gc.enable()

    def input(self) -> None:
        self.last_input = self.clock()

    def due(self, pending: int) -> bool:
        """pending: young collections since the last full one (`gc.get_count()[2]`)."""
        if pending < FULL_AFTER:
            return False
        now = self.clock()
        since_full = now - self.last_full
        return (now - self.last_input >= IDLE_S and since_full >= MIN_GAP_S) or since_full >= MAX_DEFER_S

    def tick(self) -> bool:
        """Collect if due; True when it did."""
        if not self.due(gc.get_count()[2]):
            return False
        gc.collect()
        self.last_full = self.clock()
        return True
