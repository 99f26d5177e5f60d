"""A run: cells -> executor -> events + run store -> reports.

The runner is the only writer of a run folder. It turns worker messages into events for the
listeners (CLI, app, tests) and appends each finished cell to the store as it arrives.
"""
from __future__ import annotations

import datetime as dt
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .. import claims, intrinsic_dim, report
from ..registry import Registry
from . import environment, interleave
from .cells import Cell
from .events import (CellFailed, CellFinished, CellStarted, EventBus, Progress, RecordsReady, RunFinished,
                     RunStarted)
from .executor import LocalExecutor, resolve_device
from .store import RunStore


@dataclass
class RunResult:
    run_dir: Path
    ok: int
    failed: int
    cancelled: bool


def refresh_versions(cells: list[Cell], registry: Registry) -> list[Cell]:
    """Cells with the code versions installed now, so resume reruns cells whose code changed."""
    out = []
    for c in cells:
        versions = {"method": registry.method(c.method).code_version, "task": registry.task(c.task).code_version,
                    **{f"metric:{m}": registry.metric(m).code_version for m in c.measure}}
        out.append(replace(c, versions=versions))
    return out


def failure_record(cell: Cell, run_id: str, registry: Registry, reason: str, tb: str,
                   env: dict[str, Any]) -> dict[str, Any]:
    try:
        plugin = registry.method(cell.method).plugin
        plugin_name, plugin_version = plugin.dist or plugin.name, plugin.version
    except KeyError:
        plugin_name, plugin_version = None, None
    return {"run_id": run_id, "suite": cell.suite, "suite_version": cell.suite_version, "task": cell.task,
            "method": cell.shown_name, "kind": cell.kind, "plugin": plugin_name, "plugin_version": plugin_version,
            "cell_key": cell.key, "budget": cell.budget, "knob": cell.knob, "seed": cell.seed,
            "device": cell.device, "metric": "error", "value": float("nan"), "unit": "", "status": "failed",
            "error": reason + (f"\n{tb}" if tb else ""), "torch_version": env["torch_version"],
            "python_version": env["python_version"], "device_name": env["device_name"], "git_rev": env["git_rev"],
            "config": None}


def _calibrate(cells: list[Cell], executor: LocalExecutor) -> dict[str, Any] | None:
    """Roofline calibration at run start (cached per device, torch version and worker threads), so
    workers read it instead of measuring it side by side. None when no cell asks for it."""
    if not any("latency" in c.measure and c.protocol.get("roofline", True) for c in cells):
        return None
    from dataclasses import asdict

    from ..measure import roofline

    try:
        return asdict(roofline.calibrate(executor.slots[0], executor.threads))
    except Exception as exc:  # a failed calibration leaves the records without a bound, not the run dead
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_cells(cells: list[Cell], suite_meta: dict[str, Any], registry: Registry, out_dir: Path = Path("reports"),
              device: str = "cpu", jobs: int = 1, listeners: list[Callable] | None = None,
              resume: Path | None = None, retry_failed: bool = False,
              should_stop: Callable[[], bool] = lambda: False) -> RunResult:
    bus = EventBus(listeners)
    env = environment.collect(resolve_device(device))
    if resume is not None:
        store = RunStore.open(resume)
        cells = refresh_versions(store.cells(), registry)
        done = {k for k, c in store.finished().items() if c["status"] == "ok" or not retry_failed}
    else:
        store = RunStore.create(out_dir, suite_meta, cells, env)
        done = set()
    todo = [c for c in cells if c.key not in done]
    run_id = store.run_id
    executor = LocalExecutor(device=device, jobs=jobs, threads=int(cells[0].protocol.get("threads", 0)) if cells else 0)
    if todo:
        meta = store.meta()
        meta.setdefault("environment", {})["roofline"] = _calibrate(todo, executor)
        store.write_meta(meta)
    bus.emit(RunStarted(run_id, suite_meta.get("name", "?"), str(store.dir), len(cells), len(cells) - len(todo)))
    store.set_status("running")

    by_key = {c.key: c for c in todo}
    pending: dict[str, list[dict[str, Any]]] = {}
    started: dict[str, float] = {}

    def finish(key: str, status: str, records: list[dict[str, Any]]) -> None:
        duration = time.monotonic() - started.get(key, time.monotonic())
        for r in records:
            r["duration_s"] = duration
        store.append_cell(key, secrets.token_hex(6), status, records)
        bus.emit(CellFinished(key, by_key[key].label, status, duration))

    def on_message(key: str, body: tuple) -> None:
        kind, cell = body[0], by_key[key]
        if kind == "started":
            started[key] = time.monotonic()
            pending[key] = []
            bus.emit(CellStarted(key, cell.label))
        elif kind == "progress":
            _, stage, step, steps, loss = body
            bus.emit(Progress(key, stage, step, steps, loss))
        elif kind == "records":
            pending[key].extend(body[1])
            bus.emit(RecordsReady(key, body[1]))
        elif kind == "done":
            finish(key, "ok", pending.pop(key, []))
        elif kind == "error":
            _, reason, tb = body
            pending.pop(key, None)
            bus.emit(CellFailed(key, cell.label, reason, tb))
            finish(key, "failed", [failure_record(cell, run_id, registry, reason, tb, env)])
        elif kind == "cancelled":
            pending.pop(key, None)

    completed = executor.run(todo, run_id, on_message, should_stop)
    if completed:  # after every cell, so nothing else of the run competes for the cores
        interleave.post_phase(store, cells, {c.key for c in todo}, run_id, executor.threads, executor.slots[0],
                              lambda key, i, n: bus.emit(Progress(key, "interleaved latency", i, n)), should_stop)
    meta = store.meta()
    header = (f"# {meta['suite'].get('name')} (version {meta['suite'].get('version')}) - run {run_id}\n\n"
              f"{dt.datetime.now():%Y-%m-%d %H:%M}, {env['device_name']}, torch {env['torch_version']}, "
              f"git {env['git_rev'] or 'unknown'}")
    summary = report.write(store.dir, store.records(), header)
    if meta["suite"].get("claims"):
        claims.write(store.dir, summary, meta["suite"]["claims"])
    if meta["suite"].get("intrinsic_dimension"):
        intrinsic_dim.write(store.dir, report.load(store.dir), meta["suite"]["intrinsic_dimension"])
    store.set_status("finished" if completed else "cancelled")
    cell_status = [c["status"] for k, c in store.finished().items() if not interleave.is_interleave_key(k)]
    failed_total = cell_status.count("failed")
    ok_total = cell_status.count("ok")
    bus.emit(RunFinished(run_id, str(store.dir), ok_total, failed_total, cancelled=not completed))
    return RunResult(store.dir, ok_total, failed_total, not completed)
