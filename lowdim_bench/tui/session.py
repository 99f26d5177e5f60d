"""One run driven from the app: the runner in a background thread, its events turned into
small UI updates, and the hand-over to a headless process when the app closes mid-run.

No Textual here: `post` is whatever delivers an update to the UI (the app passes
`App.post_message`, which is thread-safe). The summary table is rebuilt in this background
thread after each finished cell, so the UI thread never runs Polars during a run.

Priority: the thread that runs the cells lowers its own scheduling priority (nice +10, Linux
threads have their own) before the worker processes (or their warm server) start, and they
inherit it. On a machine with fewer cores than jobs + 1 the UI thread then still gets the CPU at
once when a key arrives; the cells' CPU time is unchanged, only who waits when both want a core
(+10 rather than +5: tab switches during a run, docs/app.md "Measured responsiveness").
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import model

BACKGROUND_NICE = 10
PROGRESS_INTERVAL_S = 0.1  # at most ten progress updates a second reach the UI


@dataclass
class RunState:
    """Counters the status line shows; a copy is posted with every update."""
    state: str = "idle"  # idle | starting | running | stopping | finished | cancelled | error
    run_id: str = ""
    run_dir: str = ""
    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    current: dict[str, str] = field(default_factory=dict)  # key -> label + stage
    started_at: float = 0.0
    message: str = ""

    @property
    def finished_here(self) -> int:
        return self.done - self.skipped

    def eta_s(self, now: float | None = None, jobs: int = 1) -> float | None:
        """Remaining cells x mean wall time per finished cell in this session."""
        now = time.monotonic() if now is None else now
        if self.finished_here <= 0 or self.state != "running":
            return None
        per_cell = (now - self.started_at) / self.finished_here
        return per_cell * (self.total - self.done)


@dataclass
class LogLine:
    text: str
    kind: str = "info"  # info | ok | failed | run
    traceback: str = ""


@dataclass
class Update:
    """What one event changes on screen. `table` is None when the rows did not change."""
    state: RunState
    log: list[LogLine]
    table: model.TableData | None = None


class RunSession:
    def __init__(self, cells: list[Any], meta: dict[str, Any], registry: Any, out_dir: Path, device: str,
                 jobs: int, post: Callable[[Update], None]) -> None:
        self.cells, self.meta, self.registry = cells, meta, registry
        self.out_dir, self.device, self.jobs, self.post = Path(out_dir), device, jobs, post
        self.by_key = {c.key: c for c in cells}
        self.state = RunState(state="starting", total=len(cells))
        self.records: list[dict[str, Any]] = []
        self.stop_event = threading.Event()
        self._last_progress = 0.0

    # ---- control (any thread) ---------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the cells in flight; finished records stay on disk (the runner wrote them)."""
        self.stop_event.set()

    def run(self) -> Any:
        """Blocking: call from a background thread."""
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        except (OSError, AttributeError):
            pass  # not Linux, or not allowed: the run goes on at normal priority
        from ..run.runner import run_cells

        try:
            return run_cells(self.cells, self.meta, self.registry, out_dir=self.out_dir, device=self.device,
                             jobs=self.jobs, listeners=[self.on_event], should_stop=self.stop_event.is_set)
        except Exception as e:  # a bad device or an unwritable folder: shown, never raised into the UI
            import traceback

            self.state.state = "error"
            self.state.message = str(e)
            self._post([LogLine(f"run failed to start: {e}", "failed", traceback.format_exc())])
            return None

    # ---- events (runner thread) ---------------------------------------------------------------
    def on_event(self, e: Any) -> None:
        from ..core import events as ev

        s = self.state
        if isinstance(e, ev.RunStarted):
            s.state, s.run_id, s.run_dir = "running", e.run_id, e.run_dir
            s.total, s.skipped, s.done, s.started_at = e.total, e.skipped, e.skipped, time.monotonic()
            self._post([LogLine(f"run {e.run_id}: {e.total} cells ({e.skipped} already done) -> {e.run_dir}", "run")])
        elif isinstance(e, ev.CellStarted):
            s.current[e.key] = e.label
            self._post([LogLine(f"start  {e.label}")])
        elif isinstance(e, ev.Progress):
            label = self.by_key[e.key].label if e.key in self.by_key else e.key
            loss = f" loss {e.loss:.4g}" if e.loss is not None else ""
            s.current[e.key] = f"{label}  {e.stage} {e.step}/{e.steps}{loss}"
            now = time.monotonic()
            if now - self._last_progress >= PROGRESS_INTERVAL_S:
                self._last_progress = now
                self._post([])
        elif isinstance(e, ev.RecordsReady):
            self.records.extend(e.records)
        elif isinstance(e, ev.CellFailed):
            first = e.reason.splitlines()[0] if e.reason else "failed"
            cell = self.by_key.get(e.key)
            if cell is not None:
                self.records.append(model.failure_record(cell, s.run_id, e.reason, e.traceback))
            self._post([LogLine(f"FAILED {e.label}: {first}", "failed", f"{e.reason}\n\n{e.traceback}".strip())])
        elif isinstance(e, ev.CellFinished):
            s.current.pop(e.key, None)
            s.done += 1
            s.failed += e.status == "failed"
            line = [LogLine(f"ok     {e.label} ({e.duration_s:.1f} s)", "ok")] if e.status == "ok" else []
            self._post(line, table=model.table_data(self.records))
        elif isinstance(e, ev.RunFinished):
            s.state = "cancelled" if e.cancelled else "finished"
            s.current.clear()
            text = f"run {'cancelled' if e.cancelled else 'finished'}: {e.ok} ok, {e.failed} failed -> {e.run_dir}"
            self._post([LogLine(text, "run")], table=model.table_data(self.records))

    def _post(self, log: list[LogLine], table: model.TableData | None = None) -> None:
        s = self.state
        snapshot = RunState(s.state, s.run_id, s.run_dir, s.total, s.skipped, s.done, s.failed, dict(s.current),
                            s.started_at, s.message)
        self.post(Update(snapshot, log, table))


def prepare_processes() -> None:
    """Start multiprocessing's resource tracker while stderr is still the real one.

    The executor's spawned workers need the tracker; started later, from inside Textual, it
    asks the captured stderr for its file descriptor, gets -1 and the first spawn fails with
    "bad value(s) in fds_to_keep". Call before App.run / run_test (LowdimApp.__init__ does).
    """
    from multiprocessing import resource_tracker

    saved = sys.stderr
    try:
        if sys.__stderr__ is not None:
            sys.stderr = sys.__stderr__
        resource_tracker.ensure_running()
    finally:
        sys.stderr = saved


def resume_command(run_dir: str | Path, device: str, jobs: int) -> list[str]:
    """The headless command that finishes a run: the same CLI a user would type."""
    return [sys.executable, "-m", "lowdim_bench.cli", "run", "--resume", str(run_dir), "--device", device,
            "--jobs", str(jobs)]


def finish_headless(run_dir: str | Path, device: str, jobs: int) -> subprocess.Popen:
    """Start `lowdim-bench run --resume RUN_DIR` detached from the terminal; it outlives the app.

    Its output goes to RUN_DIR/headless.log. The cell that was in flight when the app closed was
    stopped (its records were never written) and runs again there; every finished cell is kept.
    """
    log = open(Path(run_dir) / "headless.log", "ab")
    return subprocess.Popen(resume_command(run_dir, device, jobs), stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
