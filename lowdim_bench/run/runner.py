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

from .. import claims, report
from ..registry import Registry
from . import environment
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

    executor = LocalExecutor(device=device, jobs=jobs, threads=int(cells[0].protocol.get("threads", 0)) if cells else 0)
    completed = executor.run(todo, run_id, on_message, should_stop)
    meta = store.meta()
    header = (f"# {meta['suite'].get('name')} (version {meta['suite'].get('version')}) - run {run_id}\n\n"
              f"{dt.datetime.now():%Y-%m-%d %H:%M}, {env['device_name']}, torch {env['torch_version']}, "
              f"git {env['git_rev'] or 'unknown'}")
    summary = report.write(store.dir, store.records(), header)
    if meta["suite"].get("claims"):
        claims.write(store.dir, summary, meta["suite"]["claims"])
    store.set_status("finished" if completed else "cancelled")
    failed_total = sum(1 for c in store.finished().values() if c["status"] == "failed")
    ok_total = sum(1 for c in store.finished().values() if c["status"] == "ok")
    bus.emit(RunFinished(run_id, str(store.dir), ok_total, failed_total, cancelled=not completed))
    return RunResult(store.dir, ok_total, failed_total, not completed)
