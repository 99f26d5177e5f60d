"""Conformance checks for an Analysis: its declaration, `validate` on good and bad suite tables,
and `run` on a small run of real cells.

The kit's run (`analysis_context`): on the smoke task (or the one passed), each method entry of
the suite view (default: "dense", the reference, and "lora") at its sizes (the reference: full;
the others: budgets 0.1 and 0.5) and two seeds. Each cell's model is the task's fresh model
plus seeded noise, scored on the task's validation and test splits, so every record holds a
measured value and the saved models (when the analysis `needs` "model", as the harness saves
them only then) are the ones those records describe. One more cell failed, as runs have failed
cells. Records are built with the harness's own constructors (core/records.py), so their schema
is the run's.
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import polars as pl
from safetensors.torch import load_model
from torch import nn

from .. import api, report
from ..core import records
from ..core.cells import Cell
from ..measure.params import count_params
from ..run.artefacts import model_path, save_trained
from ..run.models import seed_everything
from ..suite_schema import HARNESS_KEYS
from .results import CheckResult, failed, passed, skipped
from .subject import perturb_, resolve_task

NEEDS = ("model",)
ENTRIES = {"dense": "dense", "lora": "lora"}
BUDGETS = (0.1, 0.5)
SEEDS = (0, 1)


class KitArtefacts:
    """api.Artefacts over the kit's run: models saved as the worker saves them (safetensors)."""

    def __init__(self, run_dir: Path, task: api.Task) -> None:
        self.dir, self._task = run_dir, task
        self.infos: dict[str, api.ArtefactInfo] = {}
        self.models: dict[str, nn.Module] = {}
        self.seeds: dict[str, int] = {}

    def add(self, cell: Cell, model: nn.Module) -> None:
        size = "full" if cell.budget is None else f"{cell.budget:g}"
        nbytes = save_trained(self.dir, cell.key, model)
        self.infos[cell.key] = api.ArtefactInfo(cell.key, cell.shown_task, cell.shown_name, cell.kind, size, cell.seed,
                                                "model", model_path(self.dir, cell.key), nbytes)
        self.models[cell.key], self.seeds[cell.key] = model, cell.seed

    def list(self, what: str = "model") -> list[api.ArtefactInfo]:
        return list(self.infos.values()) if what == "model" else []

    def load_model(self, cell_key: str) -> nn.Module:
        if cell_key not in self.models:
            raise FileNotFoundError(f"cell {cell_key} saved no model")
        model = copy.deepcopy(self.models[cell_key])
        load_model(model, str(model_path(self.dir, cell_key)))
        return model.eval()

    def task(self, cell_key: str) -> api.Task:
        return self._task

    def splits(self, cell_key: str) -> dict[str, Any]:
        return self._task.splits("target", self.seeds[cell_key])


def _cell(task: api.Task, shown: str, method: str, kind: str, budget: float | None, seed: int,
          reference: bool) -> Cell:
    return Cell(suite="kit", suite_version="1", task=task.name, task_options=dict(task.options), method=method,
                hparams={}, kind=kind, budget=budget, knob=None if budget is None else round(budget * 32), seed=seed,
                device="cpu", alias="" if shown == method else shown, reference=reference)


def analysis_context(analysis: api.Analysis, options: Any, run_dir: Path, task: api.Task | str | None = None,
                     entries: dict[str, str] | None = None, reference: str | None = "dense",
                     kind: str = "adapt") -> api.AnalysisContext:
    """The AnalysisContext of the kit's run (see the module docstring), written under run_dir."""
    task = resolve_task(task)
    entries = dict(ENTRIES if entries is None else entries)
    artefacts = KitArtefacts(run_dir, task)
    hib, unit = task.quality.higher_is_better, task.quality.unit
    rows: list[dict[str, Any]] = []
    for i, (shown, method) in enumerate(entries.items()):
        is_ref = shown == reference
        for budget in ((None,) if is_ref else BUDGETS):
            for seed in SEEDS:
                cell = _cell(task, shown, method, kind, budget, seed, is_ref)
                seed_everything(seed)
                start = task.pretrained("target", seed) or task.make_model(seed)
                model = perturb_(start, seed + 101 * i + int(100 * (budget or 0)), 0.05).eval()
                splits = task.splits("target", seed)
                base = records.origin(cell, "kit-run", {})
                values = [api.Measurement("quality", task.evaluate(model, splits["test"]), unit, higher_is_better=hib),
                          api.Measurement("quality_val", task.evaluate(model, splits["val"]), unit,
                                          higher_is_better=hib),
                          api.Measurement("budget_reached", budget or 1.0, "fraction"),
                          api.Measurement("params_trainable", count_params(model).total * (budget or 1.0), "params")]
                rows += [records.ok({**base, "budget_reached": budget or 1.0}, m, {"cell": cell.config()})
                         for m in values]
                if "model" in type(analysis).needs:
                    artefacts.add(cell, model)
    if len(entries) > 1:
        shown, method = list(entries.items())[-1]
        cell = _cell(task, shown, method, kind, 0.25, SEEDS[0], shown == reference)
        rows.append(records.failed(records.origin(cell, "kit-run", {}), "RuntimeError: a cell that failed"))
    frame = records.to_frame(rows)
    view = api.SuiteView((task.name,), entries, reference, "<kit suite>")
    return api.AnalysisContext(run_dir=run_dir, records=frame, summary=report.summary(frame), options=options,
                               suite=view, artefacts=artefacts)


def _label(analysis: api.Analysis) -> str:
    return f"analysis {type(analysis).name!r}"


def check_analysis_declaration(analysis: api.Analysis, **_: Any) -> CheckResult:
    name, cls = "declaration", type(analysis)
    problems = []
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        problems.append(f"name {getattr(cls, 'name', None)!r} is not a non-empty string")
    if not cls.description:
        problems.append("description is empty (it is what `lowdim-bench list analyses` shows)")
    if cls.table is not None and (not isinstance(cls.table, str) or not cls.table.replace("_", "").replace("-", "")
                                  .isalnum() or cls.table in HARNESS_KEYS):
        problems.append(f"table {cls.table!r} is not a TOML key of its own (letters, digits, _ and -; not one of "
                        f"the harness's fields)")
    unknown = [n for n in cls.needs if n not in NEEDS]
    if unknown:
        problems.append(f"needs {cls.needs!r}: expected names from {NEEDS}")
    if cls.run is api.Analysis.run:
        problems.append("run() is not implemented")
    if problems:
        return failed(name, _label(analysis), "a well-formed Analysis declaration", "; ".join(problems))
    return passed(name, _label(analysis))


def _view(task: api.Task | str | None, entries: dict[str, str] | None, reference: str | None) -> api.SuiteView:
    return api.SuiteView((resolve_task(task).name,), dict(ENTRIES if entries is None else entries), reference,
                         "<kit suite>")


def check_validate(analysis: api.Analysis, table: Any = None, bad_tables: Iterable[Any] | None = None,
                   task: api.Task | str | None = None, entries: dict[str, str] | None = None,
                   reference: str | None = "dense", **_: Any) -> CheckResult:
    """A good table passes and normalises to JSON (it is stored in run.json); each bad one raises
    ConfigError (so the suite loader can name the file, line and field), with a str key or None."""
    name, cls = "validate", type(analysis)
    if cls.table is not None and table is None:
        return skipped(name, _label(analysis), f"pass table= (a good [{cls.table}] table) to check validate")
    view = _view(task, entries, reference)
    out = analysis.validate(table, view)
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        return failed(name, _label(analysis), "validate returns JSON-able options (they are stored in run.json)",
                      f"{type(exc).__name__}: {exc}")
    bad_tables = list(([42] if cls.table is not None else []) if bad_tables is None else bad_tables)
    for bad in bad_tables:
        try:
            analysis.validate(copy.deepcopy(bad), view)
        except api.ConfigError as e:
            if e.key is not None and not isinstance(e.key, str):
                return failed(name, _label(analysis), "ConfigError.key a dotted field name or None", f"key {e.key!r}")
            continue
        except Exception as exc:
            return failed(name, _label(analysis), f"validate({bad!r:.80}) raises api.ConfigError(message, key=...)",
                          f"{type(exc).__name__}: {exc}")
        return failed(name, _label(analysis), f"validate({bad!r:.80}) raises api.ConfigError", "it was accepted")
    return passed(name, _label(analysis), f"1 good table, {len(bad_tables)} bad ones refused")


def check_analysis_run(analysis: api.Analysis, table: Any = None, task: api.Task | str | None = None,
                       entries: dict[str, str] | None = None, reference: str | None = "dense",
                       **_: Any) -> CheckResult:
    """run() on the kit's run returns an AnalysisResult whose table writes as CSV and renders, and
    whose records have a name, a unit and a finite value."""
    name, cls = "run", type(analysis)
    if cls.table is not None and table is None:
        return skipped(name, _label(analysis), f"pass table= (a good [{cls.table}] table) to run the analysis")
    with tempfile.TemporaryDirectory() as tmp:
        options = analysis.validate(table, _view(task, entries, reference))
        ctx = analysis_context(analysis, options, Path(tmp), task, entries, reference)
        result = analysis.run(ctx)
        if not isinstance(result, api.AnalysisResult):
            return failed(name, _label(analysis), "run returns an AnalysisResult", f"{type(result).__name__}")
        problems = []
        if result.table is not None:
            if not isinstance(result.table, pl.DataFrame):
                problems.append(f"table is a {type(result.table).__name__}, not a polars DataFrame")
            else:
                try:
                    result.table.write_csv(Path(tmp) / f"{cls.name}.csv")  # as the runner writes it
                    if not isinstance(analysis.render(result.table), str):
                        problems.append("render(table) does not return a str")
                except Exception as exc:
                    problems.append(f"the table does not write as CSV or render: {type(exc).__name__}: {exc}")
        if not isinstance(result.markdown, str):
            problems.append(f"markdown is a {type(result.markdown).__name__}, not a str")
        for r in result.records:
            if not isinstance(r, api.AnalysisRecord):
                problems.append(f"{r!r:.80} is not an AnalysisRecord")
            elif not r.metric or not r.unit:
                problems.append(f"{r.metric or '(no name)'}: a name and a unit are required")
            elif not isinstance(r.value, (int, float)) or not math.isfinite(r.value):
                problems.append(f"{r.metric}: value {r.value!r} is not a finite number")
        if problems:
            return failed(name, _label(analysis), "an AnalysisResult the runner can store", "; ".join(problems[:6]))
        rows = "no table" if result.table is None else f"{result.table.height} rows"
        return passed(name, _label(analysis), f"{rows}, {len(result.records)} records, "
                      f"{len(ctx.artefacts.list())} saved models seen")


ANALYSIS_CHECKS: dict[str, Callable[..., CheckResult]] = {
    "declaration": check_analysis_declaration,
    "validate": check_validate,
    "run": check_analysis_run,
}


def run_analysis_check(check: str, analysis: api.Analysis | type[api.Analysis], **kwargs: Any) -> CheckResult:
    """One check by name; `kwargs` are table, bad_tables, task, entries, reference."""
    if check not in ANALYSIS_CHECKS:
        raise KeyError(f"unknown analysis check {check!r}; known: {', '.join(ANALYSIS_CHECKS)}")
    analysis = analysis() if isinstance(analysis, type) else analysis
    try:
        return ANALYSIS_CHECKS[check](analysis, **kwargs)
    except Exception as exc:
        tb = traceback.format_exc().strip().splitlines()
        return failed(check, _label(analysis), "the check to run", f"{type(exc).__name__}: {exc} ({' | '.join(tb[-3:])})")
