"""The Ray executor: the same cells, events and store, with Ray placing the cells on a cluster.

One Ray task per cell, asking for the cell's resources (`threads` CPUs; one GPU for a CUDA
cell). Inside the task the cell runs exactly as on one machine: a LocalExecutor of one cell forks
it from the node's warm server (run/warm.py), enforces its time limit and turns a crash, an
out-of-memory kill or a NaN into a failed cell with the same reason as locally. The task is a
Ray generator: each event is streamed back to the runner as the worker sends it, so records
reach the run store while the cluster works. Ray decides where and when a task runs (and an
autoscaler sees the queue); there is no scheduler of ours.

What Ray adds: a node or Ray worker that dies fails its cell with Ray's reason; tasks are never
retried (a cell that killed its node once would again); a task that outlives its cell's limit
by GRACE_S (the node is stuck) is cancelled from here. Resume works across executors: a run
started locally can be finished on Ray and back, cells are keyed by configuration only.

Needs the `ray` extra (`pip install 'lowdim-bench[ray]'`); docs/scale.md has the cluster setup.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..core import events as ev
from ..core.cells import Cell
from . import warm

# Light on purpose: a Ray worker imports this module to run a task, and torch, the registry and
# the plugins are then imported by the node's warm server (started first, in run_cell) while
# the worker itself imports the local executor, not one after the other.

GRACE_S = 60.0  # past a cell's own limit, how long a Ray task may run on before it is cancelled from here
ENV_PREFIXES = ("LOWDIM_BENCH_",)  # the driver's settings every task runs with (plugins, cache, start)


class RayUnavailable(ValueError):
    """The Ray extra is not installed (a usage error: the CLI prints it and exits 2)."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--executor ray needs Ray: pip install 'lowdim-bench[ray]'") from None
    return ray


def run_cell(cell_dict: dict, run_id: str, run_dir: str, threads: int, device: str,
             preload: tuple[str, ...] = ()) -> Iterator[ev.Event]:
    """The body of a cell's Ray task (runs on a Ray worker): the cell in a fresh local process, with
    the local executor's limits and failure reasons, its events yielded as they come."""
    warm.prestart()
    from .executor import LocalExecutor, RunInfo

    ray = import_ray()
    cell = Cell.from_dict(cell_dict)
    executor = LocalExecutor(device=device, jobs=1, threads=threads)
    executor.submit([cell], RunInfo(run_id, Path(run_dir), tuple(preload)))
    node = ray.util.get_node_ip_address()
    for event in executor.events(poll_s=0.2):
        if isinstance(event, ev.CellStarted):
            event.slot = f"{node} {event.slot}"
        if event is not None:
            yield event


@dataclass
class _Task:
    cell: Cell
    gen: Any  # ray.ObjectRefGenerator
    submitted: float
    started: float | None = None
    terminal: bool = False


def task_env() -> dict[str, str]:
    """The driver's LOWDIM_BENCH_* settings (a relative path made absolute), for every task."""
    out = {}
    for k, v in os.environ.items():
        if k.startswith(ENV_PREFIXES):
            out[k] = os.path.abspath(v) if k == "LOWDIM_BENCH_CACHE" else v
    return out


def failure_reason(exc: BaseException, ray: Any) -> str:
    """A cell's reason when its Ray task itself failed (the cell's own failures come as events)."""
    x = ray.exceptions
    if isinstance(exc, x.OutOfMemoryError):
        return f"out of memory: Ray's memory monitor killed the worker: {str(exc).splitlines()[0][:300]}"
    if isinstance(exc, x.NodeDiedError):
        return f"the Ray node running the cell died: {str(exc)[:300]}"
    if isinstance(exc, x.WorkerCrashedError):
        return "the Ray worker running the cell died (killed, or out of memory)"
    if isinstance(exc, x.RuntimeEnvSetupError):
        return f"Ray could not set up the task's environment: {str(exc)[:500]}"
    if isinstance(exc, x.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"the Ray task failed before the cell ran: {type(cause).__name__}: {str(cause)[:500]}"
    return f"Ray: {type(exc).__name__}: {str(exc)[:500]}"


class RayExecutor:
    """Cells as Ray tasks. `address`: a running cluster ("auto", "ray://host:10001", ...); None joins
    the cluster this machine belongs to, or starts a local one. `threads`: CPUs (and torch
    threads) per cell; 0 takes this machine's cores shared among `jobs`, as the local executor."""

    def __init__(self, device: str = "cpu", jobs: int = 1, threads: int = 0, address: str | None = None,
                 init_options: dict[str, Any] | None = None) -> None:
        from ..core.environment import resolve_device, usable_cores

        self.ray = import_ray()
        self.device = resolve_device(device)
        self.cuda = self.device.startswith("cuda")
        # The runner's passes after the cells (calibration, interleaved latency, analyses) run here.
        self.slots = ["cuda:0" if self.device == "cuda" else self.device]
        self.threads = threads or max(1, usable_cores() // max(1, jobs))
        self.start_latency_s: dict[str, float] = {}  # cell key -> task submitted until it reported in
        self._pending: list[Cell] = []
        self._tasks: dict[str, _Task] = {}
        self._run: Any = None  # executor.RunInfo
        self._stopped = False
        if not self.ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False, **(init_options or {})}
            self.ray.init(address=address, **options)
        self._remote = self.ray.remote(run_cell)

    def submit(self, cells: list[Cell], run: Any) -> None:
        from .executor import RunInfo

        # workers may have another cwd
        self._run = RunInfo(run.run_id, Path(run.run_dir).resolve(), tuple(getattr(run, "preload", ())))
        self._pending.extend(cells)

    def cancel(self) -> None:
        self._stopped = True
        self._pending.clear()
        for t in self._tasks.values():
            self.ray.cancel(t.gen, force=True)

    def events(self, poll_s: float = 0.1) -> Iterator[ev.Event | None]:
        self._launch()
        while self._tasks:
            gens = [t.gen for t in self._tasks.values()]
            ready, _ = self.ray.wait(gens, num_returns=1, timeout=poll_s)
            got = False
            for gen in ready:
                task = next(t for t in self._tasks.values() if t.gen is gen)
                for e in self._pull(task):
                    got = True
                    yield e
            yield from self._overdue()
            if not got:
                yield None

    # ---- internals ------------------------------------------------------------------------------
    def _launch(self) -> None:
        env = task_env()
        options: dict[str, Any] = {"num_cpus": self.threads, "num_gpus": 1 if self.cuda else 0, "max_retries": 0,
                                   "retry_exceptions": False}
        if env:
            options["runtime_env"] = {"env_vars": env}
        device = "cuda:0" if self.cuda else "cpu"  # Ray shows a task only its own GPU, as cuda:0
        while self._pending and not self._stopped:
            cell = self._pending.pop(0)
            gen = self._remote.options(name=cell.label[:200], **options).remote(
                cell.__dict__, self._run.run_id, str(self._run.run_dir), self.threads, device, self._run.preload)
            self._tasks[cell.key] = _Task(cell, gen, time.monotonic())

    def _pull(self, task: _Task) -> Iterator[ev.Event]:
        key = task.cell.key
        try:
            event = self.ray.get(next(task.gen))
        except StopIteration:
            yield from self._ended(task, None)
            return
        except Exception as exc:  # the task itself failed: a dead worker or node, a cancellation
            yield from self._ended(task, exc)
            return
        if isinstance(event, ev.CellStarted):
            task.started = time.monotonic()
            self.start_latency_s[key] = task.started - task.submitted
        if task.terminal:
            return
        if isinstance(event, (ev.CellDone, ev.CellFailed, ev.CellCancelled)):
            task.terminal = True
        yield event

    def _ended(self, task: _Task, exc: BaseException | None) -> Iterator[ev.Event]:
        del self._tasks[task.cell.key]
        if task.terminal:
            return
        cell = task.cell
        if self._stopped:
            if task.started is not None:
                yield ev.CellCancelled(cell.key)
            return
        if task.started is None:
            yield ev.CellStarted(cell.key, cell.label, "ray")  # the runner expects a start before an end
        reason = failure_reason(exc, self.ray) if exc is not None else "the Ray task ended without a result"
        yield ev.CellFailed(cell.key, cell.label, reason)

    def _overdue(self) -> Iterator[ev.Event]:
        now = time.monotonic()
        for task in list(self._tasks.values()):
            if task.started is None or task.terminal or now < task.started + task.cell.timeout_s + GRACE_S:
                continue
            self.ray.cancel(task.gen, force=True)
            task.terminal = True
            yield ev.CellFailed(task.cell.key, task.cell.label,
                                f"time limit of {task.cell.timeout_s:g} s exceeded (the Ray task did not stop "
                                f"by itself within {GRACE_S:g} s more and was cancelled)")
