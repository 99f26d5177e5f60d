"""Events a run emits, and the bus that hands them to any number of listeners.

The CLI, the Textual app and tests all listen to the same events; a listener that raises is
reported once on stderr and dropped, so a broken consumer never stops a run.
"""
from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class RunStarted:
    run_id: str
    suite: str
    run_dir: str
    total: int
    skipped: int  # cells already done (resume)


@dataclass
class CellStarted:
    key: str
    label: str


@dataclass
class Progress:
    key: str
    stage: str
    step: int
    steps: int
    loss: float | None = None


@dataclass
class RecordsReady:
    key: str
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CellFailed:
    key: str
    label: str
    reason: str
    traceback: str = ""


@dataclass
class CellFinished:
    key: str
    label: str
    status: str  # ok | failed
    duration_s: float


@dataclass
class RunFinished:
    run_id: str
    run_dir: str
    ok: int
    failed: int
    cancelled: bool = False


Event = RunStarted | CellStarted | Progress | RecordsReady | CellFailed | CellFinished | RunFinished
Listener = Callable[[Event], None]


class EventBus:
    def __init__(self, listeners: list[Listener] | None = None) -> None:
        self.listeners: list[Listener] = list(listeners or [])

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                print(f"lowdim-bench: listener {listener!r} raised and was removed:\n{traceback.format_exc()}",
                      file=sys.stderr)
                self.listeners.remove(listener)
