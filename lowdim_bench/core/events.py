"""Events of a run, typed, and the bus that hands them to any number of listeners.

Two streams use these types. An executor streams what its workers report (CellStarted,
Progress, RecordsReady, CellDone, CellFailed, CellCancelled); the runner stores each cell's
records and re-emits the events, adding RunStarted, CellFinished and RunFinished, to its
listeners (the CLI, the Textual app, tests). A listener that raises is reported once on stderr
and dropped, so a broken consumer never stops a run.
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
    slot: str = ""


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
class CellDone:
    """The worker sent every record of the cell and ended well (executor stream only)."""

    key: str


@dataclass
class CellFailed:
    key: str
    label: str
    reason: str
    traceback: str = ""


@dataclass
class CellCancelled:
    """The run was stopped while the cell ran; it left no records (executor stream only)."""

    key: str


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


Event = (RunStarted | CellStarted | Progress | RecordsReady | CellDone | CellFailed | CellCancelled | CellFinished
         | RunFinished)
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
