"""A run: plan -> executor -> events + run store -> interleaved latency -> analyses -> reports.

The runner is the only writer of a run folder (the worker's artefacts aside). It stores each
cell's records as its events arrive, re-emits the events to its listeners (CLI, app, tests),
and after the cells runs the passes over the whole run: interleaved latency, then every
analysis the suite asked for, then the summary files.
"""
from __future__ import annotations

import datetime as dt
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .. import report
from ..core import events as ev
from ..core import records
from ..core.cells import Cell, is_cell_key
from ..core.environment import collect, resolve_device
from ..core.store import RunStore
from ..measure import roofline
from ..registry import Registry, UnknownName
from . import analyses, interleave
from .executor import Executor, LocalExecutor, RunInfo


@dataclass
class RunResult:
    run_dir: Path
    ok: int
    failed: int
    cancelled: bool


def refresh_versions(cells: list[Cell], registry: Registry, run_dir: Path | None = None) -> list[Cell]:
    """Cells with the code versions installed now, so resume reruns cells whose code changed."""
    out = []
    for c in cells:
        try:
            versions = {"method": registry.method(c.method).code_version, "task": registry.task(c.task).code_version,
                        **{f"metric:{m}": registry.metric(m).code_version for m in c.measure}}
        except UnknownName as e:
            raise UnknownName(f"cannot resume {run_dir or 'the run'}: {e}. Reinstall that plugin, or start a new "
                              "run without it") from None
        out.append(replace(c, versions=versions))
    return out


def failure_record(cell: Cell, run_id: str, registry: Registry, reason: str, tb: str,
                   env: dict[str, Any]) -> dict[str, Any]:
    prov = registry.methods.get(cell.method)
    plugin = (prov.plugin.dist or prov.plugin.name, prov.plugin.version) if prov else (None, None)
    return records.failed(records.origin(cell, run_id, env, *plugin), reason, tb)


def _calibrate(cells: list[Cell], executor: Executor) -> dict[str, Any] | None:
    """Roofline calibration at run start (cached per device, torch version and worker threads), so
    workers read it instead of measuring it side by side. None when no cell asks for it."""
    if not any("latency" in c.measure and c.protocol.get("roofline", True) for c in cells):
        return None
    try:
        return asdict(roofline.calibrate(executor.slots[0], executor.threads))
    except Exception as exc:  # a failed calibration leaves the records without a bound, not the run dead
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_cells(cells: list[Cell], suite_meta: dict[str, Any], registry: Registry, out_dir: Path = Path("reports"),
              device: str = "cpu", jobs: int = 1, listeners: list[Callable] | None = None,
              resume: Path | None = None, retry_failed: bool = False,
              should_stop: Callable[[], bool] = lambda: False, executor: Executor | None = None,
              executor_kind: str = "local", address: str | None = None) -> RunResult:
    """`executor`: one built by the caller; else one of `executor_kind` (local, ray at `address`),
    built once the cells (and their protocol's thread count) are known."""
    bus = ev.EventBus(listeners)
    env = collect(resolve_device(device))
    if resume is not None:
        store = RunStore.open(resume)
        cells = refresh_versions(store.cells(), registry, resume)
        store.lock()
        done = {k for k, c in store.finished().items() if c["status"] == "ok" or not retry_failed}
    else:
        store = RunStore.create(out_dir, suite_meta, cells, env)
        done = set()
    try:
        return _run(store, cells, done, suite_meta, registry, env, bus, device, jobs, should_stop, executor,
                    (executor_kind, address))
    except BaseException:  # Ctrl-C twice, a full disk: the folder must not say "running" for ever
        try:
            store.set_status("cancelled")
        except Exception:
            pass
        raise
    finally:
        store.unlock()


def _run(store: RunStore, cells: list[Cell], done: set[str], suite_meta: dict[str, Any], registry: Registry,
         env: dict[str, Any], bus: ev.EventBus, device: str, jobs: int, should_stop: Callable[[], bool],
         executor: Executor | None, kind: tuple[str, str | None] = ("local", None)) -> RunResult:
    todo = [c for c in cells if c.key not in done]
    run_id = store.run_id
    protocol_threads = int(cells[0].protocol.get("threads", 0)) if cells else 0
    executor = executor or make_executor(kind[0], device=device, jobs=jobs, threads=protocol_threads, address=kind[1])
    if todo:
        meta = store.meta()
        meta.setdefault("environment", {})["roofline"] = _calibrate(todo, executor)
        meta["environment"]["worker_threads"] = executor.threads
        store.write_meta(meta)
    bus.emit(ev.RunStarted(run_id, suite_meta.get("name") or store.meta()["suite"].get("name", "?"), str(store.dir),
                           len(cells), len(cells) - len(todo)))
    store.set_status("running")

    by_key = {c.key: c for c in todo}
    pending: dict[str, list[dict[str, Any]]] = {}
    started: dict[str, float] = {}

    def finish(key: str, status: str, recs: list[dict[str, Any]]) -> None:
        duration = time.monotonic() - started.get(key, time.monotonic())
        for r in recs:
            r["duration_s"] = duration
        store.append_cell(key, secrets.token_hex(6), status, recs)
        bus.emit(ev.CellFinished(key, by_key[key].label, status, duration))

    def handle(e: ev.Event) -> None:
        if isinstance(e, ev.CellStarted):
            started[e.key] = time.monotonic()
            pending[e.key] = []
            bus.emit(e)
        elif isinstance(e, ev.Progress):
            bus.emit(e)
        elif isinstance(e, ev.RecordsReady):
            pending.setdefault(e.key, []).extend(e.records)
            bus.emit(e)
        elif isinstance(e, ev.CellDone):
            finish(e.key, "ok", pending.pop(e.key, []))
        elif isinstance(e, ev.CellFailed):
            pending.pop(e.key, None)
            bus.emit(e)
            finish(e.key, "failed", [failure_record(by_key[e.key], run_id, registry, e.reason, e.traceback, env)])
        elif isinstance(e, ev.CellCancelled):
            pending.pop(e.key, None)

    preload = preload_modules(cells, registry)
    executor.submit(todo, RunInfo(run_id, store.dir, preload))
    stopped = False
    try:
        for event in executor.events():
            if not stopped and should_stop():
                stopped = True
                executor.cancel()
            if event is not None:
                handle(event)
    except BaseException:  # never leave workers running behind an interrupted runner
        executor.cancel()
        raise
    completed = not stopped
    meta = store.meta()
    if completed:  # after every cell, so nothing else of the run competes for the cores
        interleave.post_phase(store, cells, {c.key for c in todo}, run_id, executor.threads, executor.slots[0],
                              lambda key, i, n: bus.emit(ev.Progress(key, "interleaved latency", i, n)), should_stop,
                              preload)
    outcomes = analyses.run_all(store, meta["suite"], registry, executor.slots[0]) if completed else []
    header = (f"# {meta['suite'].get('name')} (version {meta['suite'].get('version')}) - run {run_id}\n\n"
              f"{dt.datetime.now():%Y-%m-%d %H:%M}, {env['device_name']}, torch {env['torch_version']}, "
              f"git {env['git_rev'] or 'unknown'}")
    report.write(store.dir, store.records(), header, analyses.sections(outcomes))
    store.set_status("finished" if completed else "cancelled")
    cell_status = [c["status"] for k, c in store.finished().items() if is_cell_key(k)]
    failed_total = cell_status.count("failed")
    ok_total = cell_status.count("ok")
    bus.emit(ev.RunFinished(run_id, str(store.dir), ok_total, failed_total, cancelled=not completed))
    return RunResult(store.dir, ok_total, failed_total, not completed)


def preload_modules(cells: list[Cell], registry: Registry) -> tuple[str, ...]:
    """The modules the cells' tasks and methods ask a warm server to import (`preload`)."""
    names: set[str] = set()
    for c in cells:
        for lookup, name in ((registry.task, c.task), (registry.method, c.method)):
            try:
                names.update(getattr(lookup(name).cls, "preload", ()))
            except UnknownName:
                pass  # the cell fails with the clear error
    return tuple(sorted(names))


EXECUTORS = ("local", "ray")


def make_executor(kind: str = "local", device: str = "cpu", jobs: int = 1, threads: int = 0,
                  address: str | None = None) -> Executor:
    """The executor a run asked for by name (`--executor`); Ray is imported only when chosen (here, not in
    executor.py, which run/ray_executor.py imports)."""
    if kind == "local":
        if address:
            raise ValueError("--address names a Ray cluster; add --executor ray")
        return LocalExecutor(device=device, jobs=jobs, threads=threads)
    if kind == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(device=device, jobs=jobs, threads=threads, address=address)
    raise ValueError(f"unknown executor {kind!r}; expected one of {', '.join(EXECUTORS)}")
