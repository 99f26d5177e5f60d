"""Interleaved latency: every finished cell of a task timed A B A B inside one process.

Why: per-cell latency comes from separate worker processes at different moments, and on a
shared machine a busy neighbour moved a median from 991 to 1722 us. Timed in one process, in
rounds (dense, lora, svd, dense, lora, svd, ...), a slow spell hits every method alike, so the
ratios between them hold even when the absolute figures move.

How: after all cells of a run finish, one fresh process per task (forked from the warm server,
run/warm.py, or spawned) rebuilds each ok
cell's deployed model - the method re-applied to the cell's start model (the cached base, or the
task's seeded fresh model for `train` cells) at the knob the cell reached, with the same
calibration inputs, then `Method.for_inference` - and times them with `time_interleaved`. The weights are not the trained
ones: latency does not depend on weight values, only on structure (shapes, ranks, a sparse
support), and every method's structure is fixed by (seed, knob) (sparse supports are drawn from
a seeded generator). Quality is never measured here.

Records: per cell and inference batch size, `latency_p50/p90/p99`, `latency_spread`,
`latency_n` with phase `inference_interleaved`, and `latency_ratio` (p50 over the p50 of the
group's reference cell (the suite's `reference` entry) of the same seed and kind, else of the
same seed, else any; absent when the group has none).
They are stored as one pseudo-cell `interleave:<task>` of the run (its own attempt), so a
resumed run that re-times a task replaces the old figures instead of adding to them; the cell
count of a run leaves it out. A failure is stored as one failed record, method `(interleave)`.
"""
from __future__ import annotations

import copy
import json
import os
import queue as queue_mod
import secrets
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import api
from ..core import records
from ..core.cells import Cell, is_cell_key
from ..core.environment import collect
from ..measure import latency
from ..registry import Registry
from . import lifetime, models, warm

PHASE = "inference_interleaved"
KEY_PREFIX = "interleave:"


def group_key(task: str) -> str:
    return f"{KEY_PREFIX}{task}"


@dataclass
class Reached:
    """What a finished cell reached, read from its records: the knob and the budget fraction."""

    knob: float | None
    budget_reached: float | None


def groups(cells: list[Cell], ok: dict[str, Reached]) -> dict[str, list[Cell]]:
    """Task -> its ok cells that measure latency with `interleave` on; only groups of two or more.
    `interleave_seeds = N` keeps the cells of the task's first N seeds: a deployed model's structure
    does not depend on the seed, so more seeds add rounds of the same models (a slow real model
    timed per seed took most of a run's interleaved pass)."""
    out: dict[str, list[Cell]] = {}
    for c in cells:
        if c.key in ok and "latency" in c.measure and c.protocol.get("interleave", True):
            out.setdefault(c.shown_task, []).append(c)
    for task, cs in out.items():
        n = int(cs[0].protocol.get("interleave_seeds", 0))
        if n:
            kept = set(sorted({c.seed for c in cs})[:n])
            out[task] = [c for c in cs if c.seed in kept]
    return {t: cs for t, cs in out.items() if len(cs) >= 2}


def reached_from_records(recs: list[dict[str, Any]]) -> dict[str, Reached]:
    """Cell key -> the knob and budget fraction its ok records carry. A record written before the
    cell was sized (`quality_before`, the base on the target) carries neither: a later one wins."""
    out: dict[str, Reached] = {}
    for r in recs:
        if r.get("status") == "ok" and r.get("cell_key") and is_cell_key(r["cell_key"]):
            seen = out.get(r["cell_key"])
            if seen is None or (seen.knob is None and r.get("knob") is not None):
                out[r["cell_key"]] = Reached(r.get("knob"), r.get("budget_reached"))
    return out


# ---- inside the interleave process ----------------------------------------------------------

def deployed_model(cell: Cell, reached: Reached, registry: Registry, device: torch.device,
                   run_id: str = "") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The cell's deployed model rebuilt at the knob it reached, and the record fields naming it."""
    task, method, model = models.rebuild(cell, reached.knob, registry, device, run_id)
    prov = registry.method(cell.method)
    env = collect(str(device))
    env["threads"] = torch.get_num_threads()
    base = records.origin(cell, run_id, env, prov.plugin.dist or prov.plugin.name, prov.plugin.version, str(device))
    base.update(knob=reached.knob, budget_reached=reached.budget_reached, budget_scope=task.budget_scope)
    return method.for_inference(copy.deepcopy(model)).eval(), base


def reference_key(cells: list[Cell], cell: Cell) -> str | None:
    """The reference cell (the suite's `reference` entry) a cell's latency ratio is taken against:
    same seed and kind first."""
    refs = [c for c in cells if c.reference]
    for match in (lambda c: c.seed == cell.seed and c.kind == cell.kind, lambda c: c.seed == cell.seed, lambda c: True):
        hits = [c for c in refs if match(c)]
        if hits:
            return hits[0].key
    return None


def time_group(cells: list[Cell], reached: dict[str, Reached], registry: Registry, device: torch.device,
               run_id: str) -> list[dict[str, Any]]:
    """Rebuild every cell's deployed model, time them interleaved per batch size, return records."""
    protocol = cells[0].protocol
    task = registry.task(cells[0].task).cls(**cells[0].task_options)
    built, bases = {}, {}
    for c in cells:
        built[c.key], bases[c.key] = deployed_model(c, reached[c.key], registry, device, run_id)
    cap = float(protocol.get("max_seconds", 0)) or None
    config = json.dumps({"interleave": {"cells": [c.key for c in cells], "labels": [c.label for c in cells]}},
                        sort_keys=True)
    out: list[dict[str, Any]] = []
    for bs in protocol["batch_sizes"]:
        inputs = api.Inputs.of(task.example_inputs(int(bs), device))
        seq = task.sequence_length(inputs)
        fns = {k: _call(m, inputs) for k, m in built.items()}
        with torch.no_grad():
            stats = latency.time_interleaved(fns, int(protocol["warmup"]), int(protocol["repeats"]), device,
                                             max_seconds=cap * len(cells) if cap else None)
        for c in cells:
            s = stats[c.key]
            values = [("latency_p50", s.p50, "s"), ("latency_p90", s.p90, "s"), ("latency_p99", s.p99, "s"),
                      ("latency_spread", s.spread, "p90/p50"), ("latency_n", s.n, "calls")]
            ref = reference_key(cells, c)
            if ref is not None:
                values.append(("latency_ratio", s.p50 / stats[ref].p50, "ratio"))
            out += [records.ok({**bases[c.key], "threads": s.threads},
                               api.Measurement(m, float(v), u, PHASE, int(bs), False if m != "latency_n" else None, seq),
                               config) for m, v, u in values]
    return out


def _call(model: torch.nn.Module, inputs: api.Inputs) -> Callable[[], object]:
    return lambda: inputs.call(model)


def process_main(cell_dicts: list[dict], reached: dict[str, tuple], run_id: str, queue: Any, threads: int,
                 device: str, parent: int) -> None:
    """Entry point of the interleave process (a clean interpreter: spawned, or forked from a warm server)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner handles Ctrl-C
    lifetime.die_with_parent(parent, via=warm.server_pid())
    try:
        latency.set_threads(threads or None)
        cells = [Cell.from_dict(d) for d in cell_dicts]
        registry = warm.preloaded_registry() or Registry.load()
        recs = time_group(cells, {k: Reached(*v) for k, v in reached.items()}, registry, torch.device(device), run_id)
        queue.put(("records", recs))
    except BaseException as exc:  # a plugin may raise anything
        queue.put(("error", f"{type(exc).__name__}: {str(exc)[:500]}", traceback.format_exc()))


# ---- in the runner ---------------------------------------------------------------------------

def run_group(cells: list[Cell], reached: dict[str, Reached], run_id: str, threads: int, device: str,
              timeout_s: float, preload: tuple[str, ...] = ()) -> tuple[str, list[dict[str, Any]] | str]:
    """Time one task's cells in a fresh process. ("ok", records) or ("failed", reason)."""
    ctx = warm.context(preload=preload)
    q = ctx.Queue()
    args = ([c.__dict__ for c in cells], {k: (r.knob, r.budget_reached) for k, r in reached.items()},
            run_id, q, threads, device, os.getpid())
    proc = ctx.Process(target=process_main, args=args, daemon=True)
    proc.start()
    deadline = time.monotonic() + timeout_s
    msg = None
    while msg is None:
        try:
            msg = q.get(timeout=0.2)
        except queue_mod.Empty:
            if not proc.is_alive():
                try:
                    msg = q.get(timeout=2.0)  # the feeder thread's last message
                except queue_mod.Empty:
                    msg = ("error", f"interleave process exited with code {proc.exitcode} before reporting", "")
            elif time.monotonic() > deadline:
                proc.kill()
                msg = ("error", f"time limit of {timeout_s:g} s exceeded", "")
    proc.join(5)
    q.close()
    if msg[0] == "records":
        return "ok", msg[1]
    return "failed", msg[1] + (f"\n{msg[2]}" if msg[2] else "")


def failure_record(task: str, run_id: str, reason: str) -> dict[str, Any]:
    return records.failed(records.pseudo(run_id, group_key(task), task=task, method="(interleave)", phase=PHASE), reason)


def post_phase(store: Any, cells: list[Cell], ran: set[str], run_id: str, threads: int, device: str,
               progress: Callable[[str, int, int], None] = lambda key, i, n: None,
               should_stop: Callable[[], bool] = lambda: False, preload: tuple[str, ...] = ()) -> int:
    """Time each task's ok cells interleaved and append the records to the store; returns groups timed.

    A task is (re)timed when one of its cells ran in this invocation (`ran`) or it has no
    interleaved figures yet, so a resume without new cells keeps the old ones.
    """
    reached = reached_from_records(store.records())
    finished = store.finished()
    todo = {t: cs for t, cs in groups(cells, reached).items()
            if any(c.key in ran for c in cs) or group_key(t) not in finished}
    for i, (task, group) in enumerate(todo.items()):
        if should_stop():
            break
        key = group_key(task)
        progress(key, i, len(todo))
        timeout = max(c.timeout_s for c in group)
        status, result = run_group(group, {c.key: reached[c.key] for c in group}, run_id, threads, device, timeout,
                                   preload)
        recs = result if status == "ok" else [failure_record(task, run_id, result)]
        store.append_cell(key, secrets.token_hex(6), status, recs)
        progress(key, i + 1, len(todo))
    return len(todo)
