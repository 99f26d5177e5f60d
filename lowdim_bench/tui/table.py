"""The results table's rows, computed without Textual: seeds aggregated (report.summary), human units,
best-per-column marks, the Pareto star, ties, over-budget cells, interleaved latency ratios.

Runs off the UI thread; the widget only filters, sorts and paints the frozen `TableData`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import fmt

SIZE_FAMILIES_LOWER_BETTER = ("params_", "stored_bytes", "flops_", "latency_", "memory_", "index_bytes")
KEY_COLUMNS = ["mark", "task", "kind", "method", "size"]  # frozen: they stay when the table scrolls right
INTERLEAVED = "[inference_interleaved]"
PARAMS = "params"  # a sort key: trainable parameters for adapt rows, stored for the others


@dataclass
class Row:
    group: tuple[str, str, str, str]  # task, kind, method, size
    values: dict[str, Any]  # summary columns, raw units
    text: list[str]  # shown cells, display units
    pareto: bool  # on the front of a task/kind with two or more rows
    failed: int
    best: set[str] = field(default_factory=set)  # columns where this row is the best of its task/kind
    tie: bool = False  # off the front only inside the 95% intervals
    over_budget: bool = False  # a cell of this row went over its parameter budget


@dataclass
class TableData:
    columns: list[tuple[str, str]]  # (summary column, header)
    rows: list[Row]
    records: dict[tuple[str, str, str, str], list[dict[str, Any]]]  # every record by row group (analyses: kind None)

def size_of(budget: Any, knob: Any) -> str:
    """The summary's size label (report.summary): budget, `knob N` or `full`."""
    if budget is not None and not (isinstance(budget, float) and math.isnan(budget)):
        return f"{budget:g}"
    if knob is not None and not (isinstance(knob, float) and math.isnan(knob)):
        return f"knob {knob:g}"
    return "full"


def direction(col: str, row: dict[str, Any]) -> int:
    """+1 higher is better, -1 lower is better, 0 not ranked."""
    if col == "quality":
        return -1 if row.get("higher_is_better") is False else 1
    if col == PARAMS or (col.startswith(SIZE_FAMILIES_LOWER_BETTER) and INTERLEAVED not in col):
        return -1
    if col.startswith("latency_ratio"):
        return -1
    return 0


def _bs(col: str) -> int:
    return int(col.rsplit("@bs", 1)[1])


def columns(names: list[str]) -> list[tuple[str, str]]:
    """(column, header) pairs shown, in order, of those the summary has."""
    have = set(names)
    cols = [("mark", ""), ("task", "task"), ("kind", "kind"), ("method", "method"), ("size", "budget"),
            ("budget_reached", "reached"), ("quality", "quality"), ("quality_ci95", "±95%"), ("n_seeds", "seeds"),
            ("params_trainable", "trainable"), ("params_stored", "stored"), ("flops_forward", "FLOPs/sample")]
    for c in inference_p50(names):
        cols.append((c, f"p50 ms bs{_bs(c)}" + (" AB" if INTERLEAVED in c else "")))
        ratio = f"latency_ratio{INTERLEAVED}@bs{_bs(c)}"
        if ratio in have:
            cols.append((ratio, f"×ref bs{_bs(c)}"))
    cols += [(c, "train peak MiB") for c in names if c.startswith("memory_peak[train_step]")]
    cols += [("status", "status")]
    return [(c, h) for c, h in cols if c in have or c in ("mark", "status")]


def inference_p50(names: Iterable[str]) -> list[str]:
    """The inference p50 columns by batch size: each cell's own timing, or, in a run that left
    inference to the interleaved pass (`cell_inference_latency = false`), the pass's ("AB")."""
    for phase in ("[inference]", INTERLEAVED):
        cols = sorted((c for c in names if c.startswith(f"latency_p50{phase}@bs")), key=_bs)
        if cols:
            return cols
    return []


def cell_text(col: str, v: Any) -> str:
    if col in ("task", "kind", "method", "size"):
        return str(v)
    if col in ("budget_reached", "quality_ci95"):
        return "-" if not fmt.is_num(v) else f"{v:.3g}"
    if col == "quality":
        return "-" if not fmt.is_num(v) else f"{v:.4g}"
    if col == "n_seeds":
        return fmt.plain(v)
    return fmt.metric_value(col, v)[0]


def noise_band(row: dict[str, Any], col: str, refs: list[dict[str, Any]]) -> float | None:
    """Per-call p90/p50 of this row and of its reference rows (ratio 1): the ratio is noise inside it."""
    spread = col.replace("latency_ratio", "latency_spread", 1)
    vals = [r.get(spread) for r in [row, *refs] if fmt.is_num(r.get(spread))]
    return max(vals) if vals else None


def ratio_text(row: dict[str, Any], col: str, refs: list[dict[str, Any]]) -> str:
    """'1.42×', with '~' when inside the noise band (latency_spread) of the row and its reference."""
    v = row.get(col)
    if not fmt.is_num(v):
        return "-"
    band = noise_band(row, col, refs)
    noisy = band is not None and band > 0 and 1 / band <= v <= band and abs(v - 1) > 1e-12
    return f"{v:.2f}×{'~' if noisy else ''}"


def _counted(rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Rows per task/kind with both a quality and a parameter count: a front of one says nothing."""
    n: dict[tuple[str, str], int] = {}
    for r in rows:
        p = r.get("params_trainable" if r["kind"] == "adapt" else "params_stored")
        if fmt.is_num(r.get("quality")) and fmt.is_num(p):
            n[(r["task"], r["kind"])] = n.get((r["task"], r["kind"]), 0) + 1
    return n


def table_data(records: list[dict[str, Any]]) -> TableData:
    from .. import report

    df = report.to_frame(records)
    s = report.summary(df)
    by_group: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        by_group.setdefault((r.get("task"), r.get("kind"), r.get("method"), size_of(r.get("budget"), r.get("knob"))),
                            []).append(r)
    if s.is_empty():
        return TableData([], [], by_group)
    cols = columns(s.columns)
    dicts = s.to_dicts()
    counted = _counted(dicts)
    rows = []
    for r in dicts:
        g = (r["task"], r["kind"], r["method"], r["size"])
        failed = int(r.get("n_failed") or 0)
        status = "ok" if not failed else ("failed" if not r.get("n_seeds") else f"{failed} failed")
        pareto = bool(r.get("pareto")) and counted.get(g[:2], 0) >= 2
        tie = bool(r.get("pareto_tie"))
        over = any(bool(x.get("over_budget")) for x in by_group.get(g, []))
        r[PARAMS] = r.get("params_trainable" if r["kind"] == "adapt" else "params_stored")
        refs = [o for o in dicts if o["task"] == r["task"] and o is not r]
        text = []
        for c, _ in cols:
            if c == "mark":
                text.append(("★" if pareto else "≈" if tie else "") + ("!" if over else ""))
            elif c == "status":
                text.append(status + (" over budget" if over else ""))
            elif c.startswith("latency_ratio"):
                text.append(ratio_text(r, c, [o for o in refs if o.get(c) == 1.0]))
            else:
                text.append(cell_text(c, r.get(c)))
        rows.append(Row(g, r, text, pareto, failed, tie=tie, over_budget=over))
    mark_best(rows, [c for c, _ in cols])
    return TableData(cols, rows, by_group)


def mark_best(rows: list[Row], columns: list[str]) -> None:
    """Flag the best value of each ranked column within each task and kind."""
    for col in columns:
        groups: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            if fmt.is_num(row.values.get(col)):
                groups.setdefault(row.group[:2], []).append(row)
        for members in groups.values():
            sign = direction(col, members[0].values)
            if sign == 0 or len(members) < 2:
                continue
            best = max(sign * m.values[col] for m in members)
            for m in members:
                if sign * m.values[col] == best:
                    m.best.add(col)


def sort_rows(rows: list[Row], column: str | None, descending: bool) -> list[Row]:
    if column is None:
        return list(rows)

    def key(row: Row) -> tuple:
        v = row.values.get(column)
        return (0, v, "") if fmt.is_num(v) else (0, 0, str(v))
    present = [r for r in rows if r.values.get(column) is not None]
    missing = [r for r in rows if r.values.get(column) is None]
    return sorted(present, key=key, reverse=descending) + missing


def sort_cycle(data: TableData) -> list[tuple[str, str]]:
    """What `s` steps through, each best first: quality, parameters, latency (smallest batch),
    training memory, then the table's own order."""
    names = [c for c, _ in data.columns]
    latency = inference_p50(names)
    memory = [c for c in names if c.startswith("memory_peak")]
    out = [("quality", "quality")] if "quality" in names else []
    out += [(PARAMS, "parameters")] if any(c.startswith("params_") for c in names) else []
    out += [(latency[0], "latency")] if latency else []
    out += [(memory[0], "train memory")] if memory else []
    return out


def best_first(column: str, rows: list[Row]) -> bool:
    """Descending when higher is better (quality of most tasks), else ascending."""
    return direction(column, rows[0].values if rows else {}) > 0


def filter_rows(rows: list[Row], text: str) -> list[Row]:
    """Rows whose task/kind/method/size contain every word of `text` (case-insensitive)."""
    words = text.lower().split()
    return [r for r in rows if all(any(w in g.lower() for g in r.group) for w in words)]
