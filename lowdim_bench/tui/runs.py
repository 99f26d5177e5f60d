"""Past runs for the app: the reports list, loading a run's records, comparing two, exporting.

No Textual; called from the app's thread workers.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


SIZE_FAMILIES_LOWER_BETTER = ("params_", "stored_bytes", "flops_", "latency_", "memory_", "index_bytes")


def direction(col: str, row: dict[str, Any]) -> int:
    """+1 higher is better, -1 lower is better, 0 not ranked."""
    if col == "quality":
        return -1 if row.get("higher_is_better") is False else 1
    if col.startswith(SIZE_FAMILIES_LOWER_BETTER):
        return -1
    return 0


# ---- reports ------------------------------------------------------------------------------------
@dataclass
class RunInfo:
    run_id: str
    suite: str
    created: str
    device: str
    done: int
    total: int
    failed: int
    status: str
    path: Path


def run_info(run_dir: Path) -> RunInfo:
    meta = json.loads((run_dir / "run.json").read_text())
    finished: dict[str, str] = {}
    cells_file = run_dir / "cells.jsonl"
    if cells_file.exists():
        for line in cells_file.read_text().splitlines():
            try:
                c = json.loads(line)
                finished[c["key"]] = c["status"]
            except (json.JSONDecodeError, KeyError):
                continue
    env = meta.get("environment") or {}
    return RunInfo(meta.get("run_id", run_dir.name), (meta.get("suite") or {}).get("name", "?"),
                   str(meta.get("created_at", ""))[:16].replace("T", " "), str(env.get("device_name", "?")),
                   len(finished), len(meta.get("cells") or []), sum(s == "failed" for s in finished.values()),
                   str(meta.get("status", "?")), run_dir)


def list_runs(reports_dir: Path) -> list[RunInfo]:
    """Run folders under reports_dir, newest first; folders without run.json are not runs."""
    out = []
    for d in Path(reports_dir).glob("*/run.json"):
        try:
            out.append(run_info(d.parent))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(out, key=lambda r: (r.created, r.run_id), reverse=True)


def load_records(run_dir: Path) -> list[dict[str, Any]]:
    from .. import report

    return report.load(run_dir).to_dicts()


REGRESSION_TOLERANCE = {"latency_": 0.10, "memory_process": 0.10, "train_seconds": 0.25}


@dataclass
class CompareRow:
    text: list[str]
    regression: bool
    improvement: bool


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.4g}"
    return str(int(v)) if isinstance(v, float) else str(v)


def compare_rows(a: Path, b: Path) -> list[CompareRow]:
    """report.compare of two runs with each delta judged: worse beyond the metric's tolerance
    (timings 10 %, train time 25 %, everything counted or scored: any change) is a regression."""
    from .. import report

    da, db = report.load(a), report.load(b)
    c = report.compare(da, db)
    if c.is_empty():
        return []
    sa = report.summary(da)
    hib = {r["task"]: r.get("higher_is_better") for r in sa.select("task", "higher_is_better").to_dicts()} \
        if "higher_is_better" in sa.columns else {}
    out = []
    for r in c.to_dicts():
        metric = r["metric"]
        sign = direction("quality" if metric.startswith("quality") else metric, {"higher_is_better": hib.get(r["task"])})
        text = [r["task"], r["kind"], r["method"], r["size"], metric, fmt(r["a"]), fmt(r["b"]), fmt(r["delta"]),
                "-" if r["rel"] is None else f"{r['rel']:+.1%}"]
        tol = next((t for p, t in REGRESSION_TOLERANCE.items() if metric.startswith(p)), 0.0)
        rel, delta = r.get("rel"), r.get("delta")
        worse = better = False
        if sign and delta is not None and not math.isnan(delta) and delta != 0:
            beyond = rel is None or abs(rel) > tol
            worse, better = beyond and sign * delta < 0, beyond and sign * delta > 0
        out.append(CompareRow(text, worse, better))
    return out


def export_view(records: list[dict[str, Any]], out_dir: Path, header: str) -> Path:
    """Write the Polars report files (records.parquet, summary.csv, summary.md) of the rows shown."""
    from .. import report

    out_dir.mkdir(parents=True, exist_ok=True)
    report.write(out_dir, records, header)
    return out_dir
