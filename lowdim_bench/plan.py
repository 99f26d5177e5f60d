"""One plan API: suite + overrides -> Plan(cells, suite meta), for the CLI and the app alike.

Why one: the app used to build its own cells and its own suite meta, and so dropped the
analysis tables (runs started there wrote no claims.csv). Overrides are validated by the same
schema as the suite file (suite.load_suite writes them into the suite before validating), and a
plan with two identical cells is refused here, before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import api
from .core.cells import Cell
from .core.environment import check_device
from .registry import Registry
from .suite import Overrides, Suite, SuiteError, load_suite


@dataclass
class Plan:
    suite: Suite
    cells: list[Cell]
    meta: dict[str, Any] = field(default_factory=dict)  # what run.json keeps of the suite


def resolve_suite(name: str | Path, registry: Registry) -> Path:
    """A suite file path, or the name of a suite a plugin provides."""
    path = Path(name)
    if path.exists():
        return path
    for f in registry.suite_files():
        if f.stem == str(name) or f.name == str(name):
            return f
    known = ", ".join(sorted(f.stem for f in registry.suite_files())) or "none"
    raise SuiteError(f"{name}: no such suite file, and no plugin provides a suite of that name; known: {known}")


def make_plan(suite: str | Path, registry: Registry, overrides: Overrides | None = None) -> Plan:
    """Load, validate and expand one suite with its overrides; SuiteError for anything wrong."""
    ov = overrides or Overrides()
    try:
        device = check_device(ov.device)
    except ValueError as e:
        raise SuiteError(str(e)) from None
    loaded = load_suite(resolve_suite(suite, registry), registry, ov)
    cells = expand(loaded, registry, device=device)
    for option, attr, values in (("--methods", "shown_name", ov.methods), ("--tasks", "shown_task", ov.tasks)):
        if values is None:
            continue
        known = list(dict.fromkeys(getattr(c, attr) for c in cells))
        missing = [v for v in values if v not in known]
        if missing:
            raise SuiteError(f"{option}: {missing} not in suite {loaded.name!r}; it has {known}")
        cells = [c for c in cells if getattr(c, attr) in values]
    if not cells:
        raise SuiteError(f"suite {loaded.name!r}: the selection has no cells (pick at least one method and one task)")
    _refuse_duplicates(cells)
    return Plan(loaded, cells, suite_meta(loaded))


def suite_meta(suite: Suite) -> dict[str, Any]:
    return {"name": suite.name, "version": suite.version, "path": str(suite.path), "reference": suite.reference,
            "analyses": suite.analyses, "tasks": list(suite.tasks), "entries": {m.shown_name: m.name for m in suite.methods},
            "save": suite.save}


def _refuse_duplicates(cells: list[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.key in seen:
            raise SuiteError(f"the plan has the same cell twice: {c.label} (repeated seeds, budgets or knobs, "
                             f"or two entries with identical settings)")
        seen[c.key] = c


def runs_on(task_cls: type, method_cls: type, kind: str) -> bool:
    """Whether a method runs on a task under a kind: a solver on its own problem only, and no
    other kind on a problem (a problem has no model)."""
    if issubclass(task_cls, api.Problem):
        return kind == "solve" and getattr(method_cls, "problem", None) == task_cls.name
    return kind != "solve"


def expand(suite: Suite, registry: Registry, device: str = "cpu") -> list[Cell]:
    """Suite -> cells: task x method entry x kind x (budget | knob) x seed.

    Methods with several kinds (dense) run under the kinds the suite's other methods use, as
    their reference, unless the suite names kinds for them. Solvers pair with their own problem
    only (`runs_on`); a solve cell has no recipe, lr grid or metrics (it measures itself).
    """
    used_kinds = {registry.method(m.name).cls.kind for m in suite.methods
                  if len(registry.method(m.name).cls.supported_kinds()) == 1}
    cells: list[Cell] = []
    for shown_task, spec in suite.tasks.items():
        task_p = registry.task(spec.task)
        for entry in suite.methods:
            if entry.tasks and shown_task not in entry.tasks:
                continue
            prov = registry.method(entry.name)
            cls = prov.cls
            kinds = entry.kinds or ([k for k in cls.supported_kinds() if k in used_kinds] or [cls.kind])
            if cls.knob is None:
                sizes: list[tuple[float | None, float | None]] = [(None, None)]
            elif entry.knobs:
                sizes = [(None, float(k)) for k in entry.knobs]
            else:
                sizes = [(b, None) for b in (entry.budgets or suite.budgets)]
            versions = {"method": prov.code_version, "task": task_p.code_version,
                        **{f"metric:{m}": registry.metric(m).code_version for m in suite.measure
                           if not issubclass(task_p.cls, api.Problem)}}
            for kind in kinds:
                if not runs_on(task_p.cls, cls, kind):
                    continue
                solve = kind == "solve"
                for budget, knob in sizes:
                    for seed in suite.seeds:
                        cells.append(Cell(
                            suite=suite.name, suite_version=suite.version, task=spec.task,
                            task_options=spec.options, method=entry.name, hparams=entry.hparams,
                            kind=kind, budget=budget, knob=knob, seed=seed, device=device,
                            recipe={} if solve else {**suite.recipe, **spec.recipe, **entry.recipe},
                            lr_grid=[] if solve else entry.lr_grid or suite.lr_grid,
                            measure=[] if solve else suite.measure,
                            protocol=suite.protocol, timeout_s=entry.timeout_s or suite.timeout_s,
                            alias=entry.alias, versions=versions, reference=entry.shown_name == suite.reference,
                            save=list(suite.save), task_alias=shown_task if shown_task != spec.task else "",
                        ))
    return cells
