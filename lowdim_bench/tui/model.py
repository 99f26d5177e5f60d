"""What the app shows, computed without Textual: catalog, overrides, result tables, reports.

Everything here may be slow-ish (Polars, file reads) and runs off the UI thread; the UI only
receives the frozen results (`Catalog`, `TableData`, `RunInfo` lists) and sorts/filters small lists.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
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


# ---- results and charts -------------------------------------------------------------------------
# The table lives in table.py, the charts' data in chartdata.py, past runs in runs.py; re-exported
# so the app and tests use one namespace.
def failure_record(cell: Any, run_id: str, reason: str, tb: str) -> dict[str, Any]:
    """A failed cell's record for the live table (the store holds the runner's own, built alike)."""
    from ..core import records

    return records.failed(records.origin(cell, run_id, {}), reason, tb)


CHARTS = ["quality vs parameters", "quality vs latency", "memory breakdown", "latency by batch size"]

from .chartdata import MEMORY_PARTS, params_of, smallest_batch_latency  # noqa: E402
from .runs import (CompareRow, RunInfo, compare_rows, export_view, list_runs, load_records,  # noqa: E402
                   estimate, past_durations, run_info)
from .runs import signature as runs_signature  # noqa: E402
from .table import (Row, TableData, direction, filter_rows, mark_best, size_of, sort_rows,  # noqa: E402
                    table_data)
