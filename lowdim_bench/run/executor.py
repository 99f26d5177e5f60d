"""Executors: where cells run. The protocol, and the local one (a new process per cell).

An Executor takes cells (`submit`), streams typed events as its workers report them
(`events`: CellStarted, Progress, RecordsReady, then CellDone, CellFailed or CellCancelled per
cell), and stops what runs (`cancel`). The runner is the only consumer: it stores records and
re-emits the events, so an executor never touches the run folder (artefacts aside, which the
worker writes into its own cell's folder).

Local: a worker that raises reports the error itself; one that dies (a segfault, the kernel's
OOM killer) or overruns its limit is failed here from its exit code or the clock. Either way
the other cells go on. On CPU `jobs` workers run side by side; on CUDA one worker per device.
Each cell's process is new: forked from a warm server (run/warm.py) by default, or a spawned
interpreter (`start="spawn"`). run/ray_executor.py sends the same cells to a Ray cluster.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import torch

from ..core import events as ev
from ..core.cells import Cell
from ..core.environment import resolve_device, usable_cores
from . import warm
from .worker import REPORT_FAILED_EXIT, process_main


@dataclass(frozen=True)
class RunInfo:
    """What a worker needs to know of the run: its id and folder (artefacts go under it), and the
    heavy modules its cells import (`Task.preload`, `Method.preload`) for a warm server to preload."""

    run_id: str
    run_dir: Path
    preload: tuple[str, ...] = ()


class Executor(Protocol):
    slots: list[str]
    threads: int

    def submit(self, cells: list[Cell], run: RunInfo) -> None: ...

    def events(self, poll_s: float = 0.1) -> Iterator[ev.Event | None]:
        """Events until every submitted cell ended; None when nothing happened for `poll_s` (so the
        caller can check for cancellation)."""
        ...

    def cancel(self) -> None: ...


def device_slots(device: str, jobs: int) -> list[str]:
    """One slot per parallel worker: `jobs` CPU slots, or one per CUDA device."""
    device = resolve_device(device)
    if device == "cpu":
        return ["cpu"] * max(1, jobs)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but torch sees no CUDA device")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if device.startswith("cuda:"):
        return [device]
    raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")


def exit_reason(code: int | None) -> str:
    if code == REPORT_FAILED_EXIT:
        return "out of memory: the worker could not even send its error report"
    if code is not None and code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (likely the out-of-memory killer)" if sig == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {code} before reporting a result"


def worker_threads(slots: list[str], threads: int) -> int:
    """Threads per worker: the suite's fixed count, or (0) the usable cores shared among the workers."""
    if threads:
        return threads
    return max(1, usable_cores() // len(slots)) if slots[0] == "cpu" else usable_cores()


@dataclass
class _Running:
    cell: Cell
    proc: mp.process.BaseProcess
    slot: str
    deadline: float
    terminal: bool = False
    started: float = 0.0


class LocalExecutor:
    def __init__(self, device: str = "cpu", jobs: int = 1, threads: int = 0, start: str | None = None) -> None:
        self.slots = device_slots(device, jobs)
        self.threads = worker_threads(self.slots, threads)
        self.start = warm.start_method(start)
        self._ctx = warm.context(self.start)
        self.start_latency_s: dict[str, float] = {}  # cell key -> process start until it reported in
        self._queue = self._ctx.Queue()
        self._pending: deque[Cell] = deque()
        self._free = list(self.slots)
        self._running: dict[str, _Running] = {}
        self._run: RunInfo | None = None
        self._stopped = False

    def submit(self, cells: list[Cell], run: RunInfo) -> None:
        self._run = run
        self._pending.extend(cells)
        if run.preload and self.start == "warm":  # a server that has imported them too
            self._ctx = warm.context(self.start, run.preload)

    def cancel(self) -> None:
        self._stopped = True
        self._pending.clear()
        for r in self._running.values():
            r.proc.kill()

    def events(self, poll_s: float = 0.1) -> Iterator[ev.Event | None]:
        try:
            while self._pending or self._running:
                yield from self._start_free()
                got = list(self._drain(poll_s))
                yield from got
                yield from self._reap()
                if not got:
                    yield None
        finally:
            self._queue.close()

    # ---- internals ------------------------------------------------------------------------------
    def _start_free(self) -> Iterator[ev.Event]:
        while self._pending and self._free and not self._stopped:
            cell, slot = self._pending.popleft(), self._free.pop()
            proc = self._ctx.Process(target=process_main, daemon=True,
                                     args=(cell.__dict__, self._run.run_id, str(self._run.run_dir), self._queue,
                                           self.threads, slot, os.getpid()))
            t0 = time.monotonic()
            try:
                proc.start()
            except (OSError, EOFError) as exc:  # the warm server died: the rest of the run spawns
                if self.start == "spawn":
                    raise
                print(f"lowdim-bench: the warm process server failed ({type(exc).__name__}: {exc}); "
                      "starting the remaining cells as spawned processes", file=sys.stderr)
                self.start, self._ctx = "spawn", warm.context("spawn")
                proc = self._ctx.Process(target=process_main, daemon=True, args=proc._args)
                proc.start()
            self._running[cell.key] = _Running(cell, proc, slot, time.monotonic() + cell.timeout_s, started=t0)
            yield ev.CellStarted(cell.key, cell.label, slot)

    def _drain(self, timeout: float) -> Iterator[ev.Event]:
        try:
            msg = self._queue.get(timeout=timeout)
        except queue_mod.Empty:
            return
        while True:
            running = self._running.get(getattr(msg, "key", None))
            if running is not None and not running.terminal:
                if isinstance(msg, (ev.CellDone, ev.CellFailed)):
                    running.terminal = True
                if not isinstance(msg, ev.CellStarted):  # the executor announced the start itself
                    yield msg
                else:
                    self.start_latency_s[running.cell.key] = time.monotonic() - running.started
            try:
                msg = self._queue.get_nowait()
            except queue_mod.Empty:
                return

    def _reap(self) -> Iterator[ev.Event]:
        for key, r in list(self._running.items()):
            reason = None
            if not r.proc.is_alive():
                if not r.terminal:
                    deadline = time.monotonic() + 2.0  # let the feeder thread's last messages in
                    while not r.terminal and time.monotonic() < deadline:
                        yield from self._drain(0.1)
                if not r.terminal and not self._stopped:
                    reason = exit_reason(r.proc.exitcode)
            elif time.monotonic() > r.deadline:
                r.proc.kill()
                r.proc.join(5)
                yield from self._drain(0.1)
                reason = f"time limit of {r.cell.timeout_s:g} s exceeded"
            else:
                continue
            r.proc.join(5)
            if reason and not r.terminal:
                yield ev.CellFailed(key, r.cell.label, reason)
            elif self._stopped and not r.terminal:
                yield ev.CellCancelled(key)
            del self._running[key]
            self._free.append(r.slot)

