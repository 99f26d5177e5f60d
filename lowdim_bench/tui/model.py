"""What the app shows, computed without Textual: catalog, overrides, result tables, reports.

Everything here may be slow-ish (Polars, file reads) and runs off the UI thread; the UI only
receives the frozen results (`Catalog`, `TableData`, `RunInfo` lists) and sorts/filters small lists.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS_ORDER = ["train", "adapt", "compress", "head", "merge"]


# ---- catalog ------------------------------------------------------------------------------------
@dataclass
class SuiteInfo:
    name: str
    path: Path
    description: str
    source: str  # "built-in", a plugin name, or "command line"
    error: str = ""  # the file could not be read as TOML


@dataclass
class MethodInfo:
    name: str
    kind: str
    kinds: tuple[str, ...]
    plugin: str  # "built-in" or "dist version"
    knob: str
    description: str


@dataclass
class PluginRow:
    name: str
    dist: str
    version: str
    status: str
    provides: list[str]
    error: str


@dataclass
class Catalog:
    suites: list[SuiteInfo]
    methods: list[MethodInfo]
    tasks: list[str]
    plugins: list[PluginRow]
    devices: list[str]

    @property
    def broken(self) -> list[PluginRow]:
        return [p for p in self.plugins if p.status == "broken"]

    def method_groups(self) -> list[tuple[str, str, list[MethodInfo]]]:
        """(kind, plugin label, methods) in a stable order: kinds as in the design, built-in first."""
        groups: dict[tuple[str, str], list[MethodInfo]] = {}
        for m in self.methods:
            groups.setdefault((m.kind, m.plugin), []).append(m)
        order = lambda k: (KINDS_ORDER.index(k[0]) if k[0] in KINDS_ORDER else 99, k[1] != "built-in", k[1])
        return [(kind, plugin, sorted(ms, key=lambda m: m.name)) for (kind, plugin), ms in sorted(groups.items(), key=lambda kv: order(kv[0]))]


def _plugin_label(info: Any) -> str:
    return "built-in" if info.builtin else f"{info.dist or info.name} {info.version or ''}".strip()


def suite_info(path: Path, source: str) -> SuiteInfo:
    try:
        raw = tomllib.loads(Path(path).read_text())
        return SuiteInfo(str(raw.get("name", Path(path).stem)), Path(path), str(raw.get("description", "")), source)
    except (OSError, tomllib.TOMLDecodeError) as e:
        return SuiteInfo(Path(path).stem, Path(path), "", source, error=str(e))


def cuda_devices() -> list[str]:
    import torch  # the registry already imported it; here only to count devices

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def build_catalog(registry: Any, extra_suites: list[Path] = (), devices: list[str] | None = None) -> Catalog:
    suites = [suite_info(Path(p), "command line") for p in extra_suites]
    for d in registry.suite_dirs:
        owner = next((p for p in registry.plugins.values() if f"suites:{d}" in p.provides), None)
        source = _plugin_label(owner) if owner else "?"
        files = sorted(Path(d).glob("*.toml")) if Path(d).is_dir() else [Path(d)]
        suites += [suite_info(f, source) for f in files]
    methods = []
    for name, prov in registry.methods.items():
        cls = prov.cls
        methods.append(MethodInfo(name, cls.kind, tuple(cls.supported_kinds()), _plugin_label(prov.plugin),
                                  cls.knob.name if cls.knob else "-", (cls.description or "").strip().split("\n")[0]))
    plugins = [PluginRow(p.name, p.dist or "(module)", p.version or "-", p.status, list(p.provides), p.error or "")
               for p in sorted(registry.plugins.values(), key=lambda p: p.name)]
    devs = ["auto", "cpu"] + (cuda_devices() if devices is None else devices)
    return Catalog(suites, sorted(methods, key=lambda m: m.name), sorted(registry.tasks), plugins, devs)


# ---- overrides ----------------------------------------------------------------------------------
def parse_budgets(text: str) -> list[float] | None:
    """'0.05, 0.1' -> [0.05, 0.1]; empty -> None (the suite's own). Fractions in (0, 1]."""
    out = []
    for part in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"budget {part!r} is not a number") from None
        if not (0 < v <= 1) or math.isnan(v):
            raise ValueError(f"budget {part!r} is not a fraction in (0, 1]")
        out.append(v)
    return out or None


def parse_seeds(text: str) -> list[int] | None:
    """'0, 1 2' -> [0, 1, 2]; empty -> None (the suite's own). Integers >= 0, no repeats."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
        try:
            v = int(part)
        except ValueError:
            raise ValueError(f"seed {part!r} is not an integer") from None
        if v < 0:
            raise ValueError(f"seed {part!r} is negative")
        if v in out:
            raise ValueError(f"seed {part!r} is given twice")
        out.append(v)
    return out or None


def parse_jobs(text: str) -> int:
    try:
        v = int(text.strip() or "1")
    except ValueError:
        raise ValueError(f"jobs {text.strip()!r} is not an integer") from None
    if v < 1:
        raise ValueError(f"jobs {v} must be at least 1")
    return v


@dataclass
class Selection:
    """What the setup tab holds for one suite; saved per suite path."""
    methods: list[str]
    tasks: list[str]
    device: str = "auto"
    budgets: str = ""
    seeds: str = ""
    jobs: str = "1"


def load_suite_plan(path: Path, registry: Any) -> Any:
    from ..suite import load_suite

    return load_suite(path, registry)


def suite_selection(suite: Any, registry: Any) -> Selection:
    """The suite's own selection: every method entry (by its shown name) and every task."""
    from ..plan import expand

    cells = expand(suite, registry, device="cpu")
    methods = list(dict.fromkeys(c.shown_name for c in cells))
    return Selection(methods=methods, tasks=list(suite.tasks))


def plan_cells(suite: Any, registry: Any, sel: Selection) -> tuple[list[Any], dict[str, Any]]:
    """Cells and suite meta for a selection: the core's plan API, exactly as `lowdim-bench run`
    builds them from its flags (the same validation, the same analyses)."""
    from ..plan import make_plan
    from ..suite import Overrides

    overrides = Overrides(budgets=parse_budgets(sel.budgets), seeds=parse_seeds(sel.seeds), methods=sel.methods,
                          tasks=sel.tasks, device=sel.device)
    plan = make_plan(suite.path, registry, overrides)
    return plan.cells, plan.meta


def selections_file() -> Path:
    import os

    base = os.environ.get("LOWDIM_BENCH_STATE") or str(Path.home() / ".config" / "lowdim-bench")
    return Path(base) / "selections.json"


def save_selection(suite_path: Path, sel: Selection, file: Path | None = None) -> Path:
    file = file or selections_file()
    data = json.loads(file.read_text()) if file.exists() else {}
    data[str(Path(suite_path).resolve())] = sel.__dict__
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(data, indent=1))
    return file


def saved_selection(suite_path: Path, file: Path | None = None) -> Selection | None:
    file = file or selections_file()
    try:
        data = json.loads(file.read_text())[str(Path(suite_path).resolve())]
        return Selection(**data)
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None


# ---- results ------------------------------------------------------------------------------------
@dataclass
class Row:
    group: tuple[str, str, str, str]  # task, kind, method, size
    values: dict[str, Any]  # summary columns, raw units
    text: list[str]  # shown cells, display units
    pareto: bool
    failed: int
    best: set[str] = field(default_factory=set)  # columns where this row is the best of its task/kind


@dataclass
class TableData:
    columns: list[tuple[str, str]]  # (summary column, header)
    rows: list[Row]
    records: dict[tuple[str, str, str, str], list[dict[str, Any]]]  # every record of a row


def size_of(budget: Any, knob: Any) -> str:
    """The summary's size label (report.summary): budget, `knob N` or `full`."""
    if budget is not None and not (isinstance(budget, float) and math.isnan(budget)):
        return f"{budget:g}"
    if knob is not None and not (isinstance(knob, float) and math.isnan(knob)):
        return f"knob {knob:g}"
    return "full"


def table_data(records: list[dict[str, Any]]) -> TableData:
    from .. import report

    df = report.to_frame(records)
    s = report.summary(df)
    by_group: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        by_group.setdefault((r.get("task"), r.get("kind"), r.get("method"), size_of(r.get("budget"), r.get("knob"))), []).append(r)
    if s.is_empty():
        return TableData([], [], by_group)
    cols = report.display_columns(s)
    cols += [("status", "status")]
    headers, texts = report.table_rows(s)
    rows = []
    for r, text in zip(s.to_dicts(), texts):
        failed = int(r.get("n_failed") or 0)
        status = "ok" if not failed else ("failed" if not r.get("n_seeds") else f"{failed} failed")
        rows.append(Row((r["task"], r["kind"], r["method"], r["size"]), r, text + [status], bool(r.get("pareto")), failed))
    mark_best(rows, [c for c, _ in cols])
    return TableData(cols, rows, by_group)


def mark_best(rows: list[Row], columns: list[str]) -> None:
    """Flag the best value of each ranked column within each task and kind."""
    for col in columns:
        groups: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            v = row.values.get(col)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
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
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
            return (0, v, "")
        return (1 if v is None else 0, 0, str(v))
    present = [r for r in rows if r.values.get(column) is not None]
    missing = [r for r in rows if r.values.get(column) is None]
    return sorted(present, key=key, reverse=descending) + missing


def filter_rows(rows: list[Row], text: str) -> list[Row]:
    """Rows whose task/kind/method/size contain every word of `text` (case-insensitive)."""
    words = text.lower().split()
    return [r for r in rows if all(any(w in g.lower() for g in r.group) for w in words)]


def failure_record(cell: Any, run_id: str, reason: str, tb: str) -> dict[str, Any]:
    """A failed cell's record for the live table (the store holds the runner's own, built alike)."""
    from ..core import records

    return records.failed(records.origin(cell, run_id, {}), reason, tb)


# ---- charts -------------------------------------------------------------------------------------
CHARTS = ["quality vs parameters", "quality vs latency", "memory breakdown", "latency by batch size"]
MEMORY_PARTS = ["parameters", "gradients", "optimizer", "activations"]


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]


def row_label(row: Row) -> str:
    return f"{row.group[2]} {row.group[3]}"


def params_of(row: Row) -> float | None:
    return row.values.get("params_trainable" if row.group[1] == "adapt" else "params_stored")


def quality_vs(rows: list[Row], x_of) -> tuple[list[Series], list[Series]]:
    """Points per method (x, quality), and per task and kind the Pareto rows as a line sorted by x
    (the front is computed within a task and kind, so one line each)."""
    by_method: dict[str, Series] = {}
    fronts: dict[tuple[str, str], Series] = {}
    for r in rows:
        x, q = x_of(r), r.values.get("quality")
        if x is None or q is None or x <= 0:
            continue
        s = by_method.setdefault(r.group[2], Series(r.group[2], [], []))
        s.x.append(float(x)); s.y.append(float(q))
        if r.pareto:
            f = fronts.setdefault(r.group[:2], Series(f"front {r.group[0]}/{r.group[1]}", [], []))
            f.x.append(float(x)); f.y.append(float(q))
    out = []
    for f in fronts.values():
        order = sorted(range(len(f.x)), key=lambda i: (f.x[i], f.y[i]))
        out.append(Series(f.label, [f.x[i] for i in order], [f.y[i] for i in order]))
    return list(by_method.values()), out


def smallest_batch_latency(row: Row) -> float | None:
    cols = [c for c in row.values if c.startswith("latency_p50[inference]@bs") and row.values[c] is not None]
    if not cols:
        return None
    col = min(cols, key=lambda c: int(c.rsplit("@bs", 1)[1]))
    return row.values[col] * 1e3


def memory_breakdown(rows: list[Row]) -> tuple[list[str], list[list[float]]]:
    """Row labels and, per part (parameters/gradients/optimizer/activations), MiB of a training step."""
    labels, parts = [], [[] for _ in MEMORY_PARTS]
    for r in rows:
        vals = [next((v for c, v in r.values.items() if c.startswith(f"memory_{p}[train_step]") and v is not None), None)
                for p in MEMORY_PARTS]
        if all(v is None for v in vals):
            continue
        labels.append(row_label(r))
        for i, v in enumerate(vals):
            parts[i].append((v or 0.0) / 2**20)
    return labels, parts


def latency_by_batch(rows: list[Row]) -> list[Series]:
    out = []
    for r in rows:
        pts = sorted((int(c.rsplit("@bs", 1)[1]), v * 1e3) for c, v in r.values.items()
                     if c.startswith("latency_p50[inference]@bs") and v is not None)
        if pts:
            out.append(Series(row_label(r), [float(b) for b, _ in pts], [v for _, v in pts]))
    return out


# Past runs live in runs.py; re-exported so the app and tests use one namespace.
from .runs import (SIZE_FAMILIES_LOWER_BETTER, direction,  # noqa: E402,F401
                   CompareRow, RunInfo, compare_rows, export_view, fmt, list_runs, load_records,  # noqa: E402
                   run_info)
