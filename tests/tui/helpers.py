"""Fixtures for the app tests: a tiny suite, fixed run folders, a fixed registry."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from lowdim_bench import report
from lowdim_bench.registry import BUILTIN_DIST, PluginInfo, Registry
from lowdim_bench.core.store import RunStore

TINY = """
name = "tiny-ui"
version = "1"
description = "Two fake methods on the tiny task."
budgets = [0.3, 0.6]
seeds = [0, 1]
measure = ["params", "latency", "memory"]
timeout_s = 120
tasks = ["tiny"]
[methods.fake-head]
[methods.fake-width]
[protocol]
batch_sizes = [1, 4]
repeats = 3
warmup = 1
max_seconds = 0.2
memory_batch_size = 8
train_batch_size = 8
"""

SLOW = """
name = "slow-ui"
seeds = [0, 1, 2]
measure = ["params"]
tasks = ["tiny"]
[methods.fake-slow]
"""


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def fixed_registry() -> Registry:
    """The fake plugins as a third-party distribution plus one broken plugin: never changes
    when other plugins are added to the project, so snapshots stay put."""
    import fakeplugins
    from lowdim_bench_builtin.metrics import standard

    reg = Registry()
    reg._add(standard, PluginInfo("standard-metrics", standard.__name__, BUILTIN_DIST, "0.1.0"))
    reg._add(fakeplugins, PluginInfo("fakeplugins", "fakeplugins", "fake-dist", "0.1"))
    reg._collect()
    reg.plugins["ghost"] = PluginInfo("ghost", "ghost_plugin", "ghost-dist", "2.0", status="broken",
                                      error="import of 'ghost_plugin' failed:\nTraceback (most recent call last):\n"
                                            "ModuleNotFoundError: No module named 'ghost_plugin'\n")
    return reg


def _records(run_id: str, quality: dict[str, float], latency_scale: float) -> list[dict]:
    out = []
    sizes = {"fake-head": ("adapt", None, 51), "fake-width": ("compress", 0.5, 75)}
    for method, (kind, budget, params) in sizes.items():
        for seed in (0, 1):
            base = {"run_id": run_id, "suite": "tiny-ui", "suite_version": "1", "task": "tiny", "method": method,
                    "kind": kind, "plugin": "fake-dist", "plugin_version": "0.1", "cell_key": f"{method}-{seed}",
                    "attempt": f"a-{method}-{seed}", "budget": budget, "knob": 6.0 if budget else None, "seed": seed,
                    "device": "cpu", "status": "ok", "started_at": "2025-01-02T03:04:05", "duration_s": 1.0,
                    "torch_version": "2.x", "python_version": "3.11", "device_name": "test cpu", "threads": 1,
                    "git_rev": "abc123", "config": json.dumps({"method": method, "seed": seed})}
            vals = [("quality", None, None, quality[method] + 0.01 * seed, "fraction", True),
                    ("params_trainable", None, None, params, "params", None),
                    ("params_stored", None, None, params + 100, "params", None),
                    ("latency_p50", "inference", 1, 0.001 * latency_scale, "s", None),
                    ("latency_p50", "inference", 64, 0.004 * latency_scale, "s", None),
                    ("memory_parameters", "train_step", 64, 4096.0, "B", None),
                    ("memory_gradients", "train_step", 64, 2048.0, "B", None),
                    ("memory_optimizer", "train_step", 64, 4096.0, "B", None),
                    ("memory_activations", "train_step", 64, 8192.0, "B", None),
                    ("memory_peak", "train_step", 64, 20000.0, "B", None)]
            for metric, phase, bs, value, unit, hib in vals:
                out.append({**base, "metric": metric, "phase": phase, "batch_size": bs, "value": float(value),
                            "unit": unit, "higher_is_better": hib})
    return out


def fixed_run(reports: Path, run_id: str, created: str, quality: dict[str, float], latency_scale: float = 1.0) -> Path:
    """A finished run folder with fixed figures, as the runner leaves it."""
    d = reports / run_id
    d.mkdir(parents=True)
    meta = {"run_id": run_id, "suite": {"name": "tiny-ui", "version": "1"}, "created_at": created,
            "environment": {"device_name": "test cpu"}, "status": "finished", "cells": [{}] * 4}
    (d / "run.json").write_text(json.dumps(meta))
    store = RunStore(d)
    records = _records(run_id, quality, latency_scale)
    for key in sorted({r["cell_key"] for r in records}):
        mine = [r for r in records if r["cell_key"] == key]
        store.append_cell(key, mine[0]["attempt"], "ok", [{k: v for k, v in r.items() if k != "attempt"} for r in mine])
    report.write(d, store.records(), "# fixed")
    return d


# Several methods and budgets per kind, two seeds, three batch sizes, interleaved ratios and one
# over-budget cell: enough for every chart to have a front, a tie, several colours and lines.
GRID = [  # method, kind, budget, trainable, stored, quality (seed 0), over budget
    ("fake-ref", "adapt", None, 1000, 1000, 0.900, False),
    ("fake-head", "adapt", 0.05, 50, 1050, 0.800, False),
    ("fake-head", "adapt", 0.1, 100, 1100, 0.860, False),
    ("fake-head", "adapt", 0.3, 300, 1300, 0.855, True),
    ("fake-lora", "adapt", 0.1, 120, 1120, 0.870, False),
    ("fake-ref", "compress", None, 1000, 1000, 0.900, False),
    ("fake-width", "compress", 0.1, 100, 100, 0.700, False),
    ("fake-width", "compress", 0.3, 300, 300, 0.820, False),
]


def grid_records(run_id: str) -> list[dict]:
    out = []
    for method, kind, budget, trainable, stored, quality, over in GRID:
        for seed in (0, 1):
            key = f"{method}-{kind}-{budget}-{seed}"
            base = {"run_id": run_id, "suite": "grid-ui", "suite_version": "1", "task": "tiny", "method": method,
                    "kind": kind, "plugin": "fake-dist", "plugin_version": "0.1", "cell_key": key, "attempt": f"a-{key}",
                    "budget": budget, "knob": None, "seed": seed, "device": "cpu", "status": "ok",
                    "started_at": "2025-01-02T03:04:05", "duration_s": 2.0 + stored / 1000, "torch_version": "2.x",
                    "python_version": "3.11", "device_name": "test cpu", "threads": 1, "git_rev": "abc123",
                    "config": json.dumps({"method": method, "seed": seed}), "over_budget": over,
                    "budget_reached": None if budget is None else budget * 0.96}
            vals = [("quality", None, None, quality + 0.004 * seed, "fraction", True),
                    ("params_trainable", None, None, trainable, "params", False),
                    ("params_stored", None, None, stored, "params", False),
                    ("flops_forward", None, None, 2 * stored, "FLOPs", False)]
            for bs in (1, 8, 64):
                vals.append(("latency_p50", "inference", bs, 1e-5 * stored / 100 * (1 + bs / 8), "s", False))
            for part, scale in (("parameters", 4), ("gradients", 4 if kind != "adapt" else 0.4), ("optimizer", 8),
                                ("activations", 20)):
                vals.append((f"memory_{part}", "train_step", 64, scale * trainable * 10.0, "B", False))
            if seed == 0:
                for bs in (1, 64):
                    ratio = 1.0 if method == "fake-ref" else stored / 1000 + 0.05
                    vals += [("latency_ratio", "inference_interleaved", bs, ratio, "x", False),
                             ("latency_spread", "inference_interleaved", bs, 1.3, "x", False)]
            for metric, phase, bs, value, unit, hib in vals:
                out.append({**base, "metric": metric, "phase": phase, "batch_size": bs, "value": float(value),
                            "unit": unit, "higher_is_better": hib})
    return out


def grid_run(reports: Path, run_id: str = "20250103-000000-grid-ui-cccc", created: str = "2025-01-03T00:00:00") -> Path:
    d = reports / run_id
    d.mkdir(parents=True)
    records = grid_records(run_id)
    meta = {"run_id": run_id, "suite": {"name": "grid-ui", "version": "1"}, "created_at": created,
            "environment": {"device_name": "test cpu"}, "status": "finished", "cells": [{}] * (len(GRID) * 2)}
    (d / "run.json").write_text(json.dumps(meta))
    store = RunStore(d)
    for key in sorted({r["cell_key"] for r in records}):
        mine = [r for r in records if r["cell_key"] == key]
        store.append_cell(key, mine[0]["attempt"], "ok", [{k: v for k, v in r.items() if k != "attempt"} for r in mine])
    store.append_cell("interleave:tiny", "a-interleave", "ok", [])
    pl.DataFrame(records).drop("attempt").write_parquet(d / "records.parquet")
    return d
