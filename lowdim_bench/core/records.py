"""One Record type: the long-format row every measured value becomes, and its two constructors.

A record is a plain dict (JSON lines on disk, a Polars row in reports) whose fields are SCHEMA.
`origin` builds the who/what/where fields a cell's records share; `ok` adds one measured value,
`failed` one failure. The worker, the runner, the interleave pass, the analyses and the app all
build records through these, so a field added here reaches every writer.
"""
from __future__ import annotations

import json
from typing import Any

import polars as pl

from ..api import AnalysisRecord, Measurement
from .cells import Cell

Record = dict[str, Any]

SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.Utf8, "suite": pl.Utf8, "suite_version": pl.Utf8,
    "task": pl.Utf8, "method": pl.Utf8, "kind": pl.Utf8, "plugin": pl.Utf8, "plugin_version": pl.Utf8,
    "config": pl.Utf8, "cell_key": pl.Utf8, "attempt": pl.Utf8,
    "budget": pl.Float64, "budget_reached": pl.Float64, "over_budget": pl.Boolean, "budget_scope": pl.Utf8,
    "knob": pl.Float64, "seed": pl.Int64, "reference": pl.Boolean,
    "device": pl.Utf8, "metric": pl.Utf8, "phase": pl.Utf8, "batch_size": pl.Int64, "seq_len": pl.Int64,
    "step": pl.Int64,  # a point of a series (a solver's round): kept out of summaries, drawn as a curve
    "value": pl.Float64, "unit": pl.Utf8, "higher_is_better": pl.Boolean,
    "status": pl.Utf8, "error": pl.Utf8, "started_at": pl.Utf8, "duration_s": pl.Float64,
    "torch_version": pl.Utf8, "python_version": pl.Utf8, "device_name": pl.Utf8, "threads": pl.Int64,
    "git_rev": pl.Utf8,
}

MAX_ERROR_CHARS = 20_000  # a failure's text (reason + traceback); the head and the tail are kept


def cap_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to `limit` characters, keeping its start (the reason) and its end (where it broke)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


def origin(cell: Cell, run_id: str, env: dict[str, Any], plugin: str | None = None,
           plugin_version: str | None = None, device: str | None = None) -> Record:
    """The fields every record of one cell carries (who, what, where)."""
    return {
        "run_id": run_id, "suite": cell.suite, "suite_version": cell.suite_version, "task": cell.shown_task,
        "method": cell.shown_name, "kind": cell.kind, "plugin": plugin, "plugin_version": plugin_version,
        "cell_key": cell.key, "budget": cell.budget, "knob": cell.knob, "seed": cell.seed,
        "reference": cell.reference, "device": device or cell.device,
        "torch_version": env.get("torch_version"), "python_version": env.get("python_version"),
        "device_name": env.get("device_name"), "threads": env.get("threads"), "git_rev": env.get("git_rev"),
    }


def ok(base: Record, m: Measurement, config: dict[str, Any] | str | None = None) -> Record:
    """A measured value of a cell."""
    if isinstance(config, dict):
        config = json.dumps(config, default=str, sort_keys=True)
    return {**base, "metric": m.metric, "value": float(m.value), "unit": m.unit, "phase": m.phase,
            "batch_size": m.batch_size, "seq_len": m.seq_len, "step": m.step, "higher_is_better": m.higher_is_better,
            "status": "ok", "config": config}


def failed(base: Record, reason: str, traceback: str = "") -> Record:
    """A cell (or a pass over cells) that failed: one record, metric "error", value NaN."""
    text = reason + (f"\n{traceback}" if traceback else "")
    return {**base, "metric": "error", "value": float("nan"), "unit": "", "status": "failed",
            "error": cap_text(text), "config": None}


def pseudo(run_id: str, key: str, **fields: Any) -> Record:
    """The origin of records that belong to a pass over a run (interleave, an analysis), not a cell."""
    return {"run_id": run_id, "cell_key": key, **fields}


def from_analysis(base: Record, r: AnalysisRecord) -> Record:
    """An analysis's value as a record of the run."""
    ident = {k: getattr(r, k) for k in ("task", "method", "kind", "seed") if getattr(r, k) is not None}
    m = Measurement(r.metric, r.value, r.unit, r.phase, higher_is_better=r.higher_is_better)
    return ok({**base, **ident}, m)


def to_frame(records: list[Record]) -> pl.DataFrame:
    rows = [{k: r.get(k) for k in SCHEMA} for r in records]
    return pl.DataFrame(rows, schema=SCHEMA)
