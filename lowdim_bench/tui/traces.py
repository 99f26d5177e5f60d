"""Curves of solve cells' traces (error vs rounds, error vs seconds), as data for a chart.

A solve cell (run/solve.py) stores each traced value as a record `trace_<name>` whose `step` is
the solver's iteration; `trace_seconds` at the same step is the solver's own cumulative time
(its clock leaves out the scoring of the iterates). A chart of some rows of the results table
draws one line per (method, size, seed): y = a traced value, x = the step or those seconds.
Plain data, no Textual: the app's chart widget reads `curves`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

PREFIX = "trace_"
TIME = "seconds"  # the traced value that is the solver's cumulative time


@dataclass
class Curve:
    label: str  # "altmin knob 8 seed 0"
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    method: str = ""  # the colour key (a method keeps its colour in every chart)


def traced_values(records: Iterable[dict[str, Any]]) -> list[str]:
    """Names of the values the cells traced (rel_error, loss, ...), the time itself left out."""
    names = {r["metric"][len(PREFIX):] for r in records
             if r.get("step") is not None and str(r.get("metric", "")).startswith(PREFIX)}
    return sorted(names - {TIME, "round_seconds"})


def _size(r: dict[str, Any]) -> str:
    b, k = r.get("budget"), r.get("knob")
    if b is not None and not (isinstance(b, float) and math.isnan(b)):
        return f"{b:g}"
    if k is not None and not (isinstance(k, float) and math.isnan(k)):
        return f"knob {k:g}"
    return "full"


def curves(records: Iterable[dict[str, Any]], value: str = "rel_error", against: str = "step") -> list[Curve]:
    """One curve per (task, method, size, seed) that traced `value`, points in step order; `against`
    is "step" (rounds, epochs) or "seconds" (the solver's cumulative time at that step). Points
    whose y or x is not finite are left out."""
    if against not in ("step", TIME):
        raise ValueError(f"against must be 'step' or {TIME!r}, got {against!r}")
    ys: dict[tuple, dict[int, float]] = {}
    ts: dict[tuple, dict[int, float]] = {}
    for r in records:
        step, metric = r.get("step"), str(r.get("metric", ""))
        if step is None or r.get("status") not in (None, "ok") or not metric.startswith(PREFIX):
            continue
        key = (r.get("task"), r.get("method"), _size(r), r.get("seed"))
        name = metric[len(PREFIX):]
        if name == value:
            ys.setdefault(key, {})[int(step)] = r["value"]
        if name == TIME:
            ts.setdefault(key, {})[int(step)] = r["value"]
    out = []
    for key in sorted(ys, key=lambda k: tuple(str(x) for x in k)):
        task, method, size, seed = key
        curve = Curve(f"{method} {size} seed {seed}" if len({k[0] for k in ys}) == 1 else
                      f"{task}/{method} {size} seed {seed}", method=str(method))
        for step in sorted(ys[key]):
            x = float(step) if against == "step" else ts.get(key, {}).get(step, math.nan)
            y = ys[key][step]
            if y is not None and math.isfinite(x) and math.isfinite(y):
                curve.x.append(x)
                curve.y.append(float(y))
        if curve.x:
            out.append(curve)
    return out


@dataclass
class TraceView:
    """What the app's trace chart draws: the solve rows of one task, one traced value."""

    task: str
    value: str  # the traced value drawn (the problem's headline when it traced it)
    against: str  # "step" or "seconds"
    curves: list[Curve]
    log_y: bool  # errors fall over decades: a log axis when every y > 0 and they span 100x
    others: int = 0  # how many other tasks have solve rows (`k` in the table moves between them)


def trace_view(rows: list[Any], selected: Any | None, records: dict[tuple, list[dict[str, Any]]],
               against: str = "step") -> TraceView | None:
    """The selected row's task if it is a solve row that traced, else the first solve task that did:
    every traced curve of its rows. None when no shown solve row has a trace."""
    tasks = list(dict.fromkeys(r.group[0] for r in rows if r.group[1] == "solve"))
    if not tasks:
        return None
    if selected is not None and selected.group[:2] in {(t, "solve") for t in tasks}:
        tasks.remove(selected.group[0])
        tasks.insert(0, selected.group[0])
    for task in tasks:  # the selected row's task, else the first that traced something (samplers do not)
        recs = [r for row in rows if row.group[:2] == (task, "solve") for r in records.get(row.group, [])]
        names = traced_values(recs)
        if names:
            break
    else:
        return None
    scored = {r.get("metric") for r in recs if r.get("step") is None}
    value = next((n for n in names if n in scored), names[0])  # progress() names the problem's scores
    drawn = curves(recs, value, against)
    ys = [y for c in drawn for y in c.y]
    log_y = bool(ys) and min(ys) > 0 and max(ys) / min(ys) >= 100
    return TraceView(task, value, against, drawn, log_y, len(tasks) - 1)
