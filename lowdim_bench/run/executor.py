"""Local executor: each cell in its own spawned worker process, with a time limit.

A worker that raises reports the error itself; one that dies (a segfault, the kernel's OOM
killer) or overruns its limit is failed here from its exit code or the clock. Either way the
other cells go on. On CPU `jobs` workers run side by side; on CUDA one worker per device.
"""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

from .cells import Cell
from .environment import usable_cores
from .worker import process_main

OnMessage = Callable[[str, tuple], None]


@dataclass
class _Running:
    cell: Cell
    proc: mp.process.BaseProcess
    slot: str
    deadline: float
    terminal: bool = False


def resolve_device(device: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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
    if code is not None and code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (likely the out-of-memory killer)" if sig == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {code} before reporting a result"


class LocalExecutor:
    def __init__(self, device: str = "cpu", jobs: int = 1, threads: int = 0) -> None:
        self.slots = device_slots(device, jobs)
        per_worker = max(1, usable_cores() // len(self.slots)) if self.slots[0] == "cpu" else usable_cores()
        self.threads = threads or per_worker

    def run(self, cells: list[Cell], run_id: str, on_message: OnMessage,
            should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Run cells; return False when stopped early. Messages: (key, (kind, ...))."""
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        pending = deque(cells)
        free = list(self.slots)
        running: dict[str, _Running] = {}

        def drain(timeout: float) -> None:
            try:
                msg = q.get(timeout=timeout)
            except queue_mod.Empty:
                return
            while True:
                key, body = msg[0], msg[1:]
                if key in running:
                    if body[0] in ("done", "error"):
                        running[key].terminal = True
                    on_message(key, body)
                try:
                    msg = q.get_nowait()
                except queue_mod.Empty:
                    return

        stopped = False
        while pending or running:
            if should_stop():
                stopped = True
                pending.clear()
                for r in running.values():
                    r.proc.kill()
            while pending and free and not stopped:
                cell, slot = pending.popleft(), free.pop()
                proc = ctx.Process(target=process_main, daemon=True,
                                   args=(cell.__dict__, cell.key, run_id, q, self.threads, slot))
                proc.start()
                running[cell.key] = _Running(cell, proc, slot, time.monotonic() + cell.timeout_s)
                on_message(cell.key, ("started", slot))
            drain(0.1)
            for key, r in list(running.items()):
                reason = None
                if not r.proc.is_alive():
                    if not r.terminal:
                        deadline = time.monotonic() + 2.0  # let the feeder thread's last messages in
                        while not r.terminal and time.monotonic() < deadline:
                            drain(0.1)
                    if not r.terminal and not stopped:
                        reason = exit_reason(r.proc.exitcode)
                elif time.monotonic() > r.deadline:
                    r.proc.kill()
                    r.proc.join(5)
                    drain(0.1)
                    reason = f"time limit of {r.cell.timeout_s:g} s exceeded"
                else:
                    continue
                r.proc.join(5)
                if reason and not r.terminal:
                    on_message(key, ("error", reason, ""))
                elif stopped and not r.terminal:
                    on_message(key, ("cancelled",))
                del running[key]
                free.append(r.slot)
        q.close()
        return not stopped
