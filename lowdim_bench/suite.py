"""Suite files: TOML -> validated Suite -> Cells.

Errors name the file, the line where we can find it, the table and the field, and say what was
expected. Names of methods, tasks and metrics are checked against the registry so a typo lists
the known names. The format is documented in docs/suites.md.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import api
from .claims import RELATIONS, Check, Claim
from .hparams import declared
from .intrinsic_dim import parse_options as _intrinsic_options
from .registry import Registry, UnknownName
from .run.cells import Cell

DEFAULT_MEASURE = ["params", "flops", "latency", "memory"]
DEFAULT_PROTOCOL: dict[str, Any] = {
    "batch_sizes": [1, 64],
    "warmup": 5,
    "repeats": 30,
    "max_seconds": 2.0,
    "threads": 0,  # 0 = every usable core, divided among parallel jobs
    "memory_batch_size": 64,
    "train_batch_size": 64,
    "interleave": True,  # after a task's cells finish, time them all A B A B in one process
    "compile": False,  # also time torch.compile'd inference, compile time kept apart
    "roofline": True,  # latency records carry their roofline bound (device calibrated at run start)
}
BOOL_PROTOCOL = {"interleave", "compile", "roofline"}
METHOD_KEYS = {"method", "budgets", "knobs", "kinds", "recipe", "lr_grid", "timeout_s", "tasks"}
TOP_KEYS = {"name", "version", "description", "tasks", "methods", "budgets", "seeds", "measure", "claims",
            "protocol", "tuning", "timeout_s", "recipe", "intrinsic_dimension"}


class SuiteError(Exception):
    """A suite that cannot run. The message is meant for the user as is."""


@dataclass
class MethodEntry:
    name: str  # the registered method
    alias: str  # the suite's name for the entry ("lowrank" = sltrain with delta 0)
    hparams: dict[str, Any]
    budgets: list[float]
    knobs: list[float]
    kinds: list[str]
    recipe: dict[str, Any]
    lr_grid: list[float]
    timeout_s: float | None = None
    tasks: list[str] = field(default_factory=list)  # only these of the suite's tasks (default: all)


@dataclass
class Suite:
    path: Path
    name: str
    version: str
    description: str
    tasks: dict[str, dict[str, Any]]  # name -> {"options": {...}, "recipe": {...}}
    methods: list[MethodEntry]
    budgets: list[float]
    seeds: list[int]
    measure: list[str]
    protocol: dict[str, Any]
    lr_grid: list[float]
    timeout_s: float
    recipe: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    intrinsic_dimension: dict[str, Any] | None = None  # [intrinsic_dimension]: the d_int90 analysis


class _Where:
    """Builds error messages that point at file, line, table and field."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, text.splitlines()

    def line_of(self, table: str | None, key: str | None) -> int | None:
        start = 0
        if table:
            pat = re.compile(r"^\s*\[+\s*" + re.escape(table).replace(r"\.", r"\s*\.\s*\"?") + r"\"?\s*\]+")
            hits = [i for i, ln in enumerate(self.lines) if pat.match(ln)]
            if not hits:
                return None
            start = hits[0]
            if key is None:
                return start + 1
        if key:
            kpat = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=")
            for i in range(start + (1 if table else 0), len(self.lines)):
                if table and i > start and self.lines[i].lstrip().startswith("[") and not kpat.match(self.lines[i]):
                    break
                if kpat.match(self.lines[i]):
                    return i + 1
        return None

    def error(self, table: str | None, key: str | None, msg: str) -> SuiteError:
        line = self.line_of(table, key)
        loc = f"{self.path}" + (f":{line}" if line else "")
        what = " ".join(x for x in [f"[{table}]" if table else "", f"field {key!r}" if key else ""] if x)
        return SuiteError(f"{loc}: {what + ': ' if what else ''}{msg}")


def _numbers(where: _Where, table: str | None, key: str, value: Any, lo: float, hi: float | None,
             integer: bool = False, lo_open: bool = False) -> list:
    kind = "integers" if integer else "numbers"
    rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}]"
    if not isinstance(value, list) or not value:
        raise where.error(table, key, f"expected a non-empty list of {kind} in {rng}, got {value!r}")
    for v in value:
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type or (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            raise where.error(table, key, f"expected a non-empty list of {kind} in {rng}, got {v!r} in {value!r}")
    return list(value)


def _table(where: _Where, table: str, key: str | None, value: Any) -> dict:
    if not isinstance(value, dict):
        raise where.error(table, key, f"expected a table, got {type(value).__name__} {value!r}")
    return value


def load_suite(path: str | Path, registry: Registry) -> Suite:
    """Read and validate a suite file against what the registry provides."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SuiteError(f"{path}: cannot read suite file: {e.strerror or e}") from None
    where = _Where(path, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None

    for key in raw:
        if key not in TOP_KEYS:
            raise where.error(None, key, f"unknown top-level field; expected one of {sorted(TOP_KEYS)}")
    for key in ("name", "tasks", "methods"):
        if key not in raw:
            raise where.error(None, key, "required field is missing")
    name = raw["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise where.error(None, "name", f"expected a name of letters, digits, '-', '_' or '.', got {name!r}")
    version = str(raw.get("version", "1"))
    budgets = _numbers(where, None, "budgets", raw.get("budgets", [1.0]), 0, 1, lo_open=True)
    seeds = _numbers(where, None, "seeds", raw.get("seeds", [0]), 0, None, integer=True)
    timeout = _seconds(where, None, raw.get("timeout_s", 600))

    tasks = _load_tasks(where, raw["tasks"], registry)
    methods = _load_methods(where, raw["methods"], registry, set(tasks))
    measure = raw.get("measure", DEFAULT_MEASURE)
    if not isinstance(measure, list) or not all(isinstance(m, str) for m in measure):
        raise where.error(None, "measure", f"expected a list of metric names, got {measure!r}")
    for m in measure:
        try:
            registry.metric(m)
        except UnknownName as e:
            raise where.error(None, "measure", str(e)) from None

    protocol = dict(DEFAULT_PROTOCOL)
    for key, value in _table(where, "protocol", None, raw.get("protocol", {})).items():
        if key not in DEFAULT_PROTOCOL:
            raise where.error("protocol", key, f"unknown field; expected one of {sorted(DEFAULT_PROTOCOL)}")
        if key == "batch_sizes":
            value = _numbers(where, "protocol", key, value, 1, None, integer=True)
        elif key in BOOL_PROTOCOL:
            if not isinstance(value, bool):
                raise where.error("protocol", key, f"expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise where.error("protocol", key, f"expected a number >= 0, got {value!r}")
        protocol[key] = value

    tuning = _table(where, "tuning", None, raw.get("tuning", {}))
    for key in tuning:
        if key != "lr":
            raise where.error("tuning", key, "unknown field; expected 'lr' (a learning-rate grid)")
    lr_grid = _numbers(where, "tuning", "lr", tuning["lr"], 0, None, lo_open=True) if "lr" in tuning else []
    recipe = _recipe(where, "recipe", raw.get("recipe", {}))
    claims = _load_claims(where, raw.get("claims", []), tasks, methods)
    intrinsic = None
    if "intrinsic_dimension" in raw:  # validated here, evaluated at the end of the run (intrinsic_dim.py)
        intrinsic = vars(_intrinsic_options(raw["intrinsic_dimension"], [(m.alias or m.name, m.name) for m in methods],
                                            lambda key, msg: where.error("intrinsic_dimension", key, msg)))

    return Suite(path=path, name=name, version=version, description=str(raw.get("description", "")),
                 tasks=tasks, methods=methods, budgets=budgets, seeds=seeds, measure=list(measure),
                 protocol=protocol, lr_grid=lr_grid, timeout_s=float(timeout), recipe=recipe,
                 claims=claims, intrinsic_dimension=intrinsic)


def _seconds(where: _Where, table: str | None, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise where.error(table, "timeout_s", f"expected a positive number of seconds, got {value!r}")
    return float(value)


def _recipe(where: _Where, table: str, value: Any) -> dict[str, Any]:
    value = _table(where, table, None, value)
    fields = api.Recipe.__dataclass_fields__
    for key in value:
        if key not in fields:
            raise where.error(table, key, f"unknown recipe field; expected one of {sorted(fields)}")
    return dict(value)


def _load_claims(where: _Where, value: Any, tasks: dict[str, Any], methods: list["MethodEntry"]) -> list[Claim]:
    """`[[claims]]`: name, text, task, optional kind, and `[[claims.checks]]` (see claims.Check)."""
    if not isinstance(value, list):
        raise where.error(None, "claims", "expected an array of tables ([[claims]])")
    entries = {m.alias or m.name for m in methods}
    out = []
    for i, raw in enumerate(value):
        table = f"claims #{i + 1}"
        if not isinstance(raw, dict):
            raise where.error(None, "claims", f"{table}: expected a table")
        raw = dict(raw)
        for key in ("name", "text", "task", "checks"):
            if key not in raw:
                raise where.error(None, "claims", f"{table}: required field {key!r} is missing")
        if raw["task"] not in tasks:
            raise where.error(None, "claims", f"{table}: task {raw['task']!r} is not in the suite's tasks {sorted(tasks)}")
        kind = raw.get("kind")
        if kind is not None and kind not in api.KINDS:
            raise where.error(None, "claims", f"{table}: kind {kind!r} not in {api.KINDS}")
        checks = []
        for j, c in enumerate(raw["checks"] if isinstance(raw["checks"], list) else [None]):
            where_c = f"{table} check #{j + 1}"
            if not isinstance(c, dict) or "a" not in c or "b" not in c:
                raise where.error(None, "claims", f"{where_c}: expected a table with 'a' and 'b' (\"method@size\")")
            unknown = set(c) - set(Check.__dataclass_fields__)
            if unknown:
                raise where.error(None, "claims", f"{where_c}: unknown field(s) {sorted(unknown)}; "
                                  f"expected {sorted(Check.__dataclass_fields__)}")
            for ref in (c["a"], c["b"]):
                if str(ref).partition("@")[0].strip() not in entries:
                    raise where.error(None, "claims", f"{where_c}: {ref!r} names no method entry of the suite; "
                                      f"entries: {sorted(entries)}")
            if c.get("relation", "better") not in RELATIONS:
                raise where.error(None, "claims", f"{where_c}: relation {c.get('relation')!r} not in {RELATIONS}")
            checks.append(Check(**c))
        out.append(Claim(name=str(raw["name"]), text=str(raw["text"]), task=raw["task"], kind=kind, checks=checks))
    return out


def _load_tasks(where: _Where, value: Any, registry: Registry) -> dict[str, dict[str, Any]]:
    if isinstance(value, list):
        value = {t: {} for t in value}
    if not isinstance(value, dict) or not value:
        raise where.error(None, "tasks", f"expected a list of task names or a table of tasks, got {value!r}")
    out = {}
    for tname, opts in value.items():
        if not isinstance(tname, str):
            raise where.error(None, "tasks", f"expected task names, got {tname!r}")
        try:
            cls = registry.task(tname).cls
        except UnknownName as e:
            raise where.error(f"tasks.{tname}" if opts else None, None if opts else "tasks", str(e)) from None
        opts = dict(_table(where, f"tasks.{tname}", None, opts))
        recipe = _recipe(where, f"tasks.{tname}.recipe", opts.pop("recipe", {}))
        for key in opts:
            if key not in declared(cls):  # `params` and plain `defaults` alike (core v2)
                raise where.error(f"tasks.{tname}", key,
                                  f"unknown option of task {tname!r}; known: {sorted(declared(cls)) or 'none'}")
        out[tname] = {"options": opts, "recipe": recipe}
    return out


def _load_methods(where: _Where, value: Any, registry: Registry, suite_tasks: set[str]) -> list[MethodEntry]:
    if isinstance(value, list):
        value = {m: {} for m in value}
    if not isinstance(value, dict) or not value:
        raise where.error(None, "methods", f"expected a list of method names or a table of methods, got {value!r}")
    entries = []
    for alias, spec in value.items():
        table = f"methods.{alias}"
        spec = dict(_table(where, table, None, spec))
        mname = spec.pop("method", alias)
        try:
            cls = registry.method(mname).cls
        except UnknownName as e:
            raise where.error(table if spec or mname != alias else None,
                              "method" if mname != alias else (None if spec else "methods"), str(e)) from None
        budgets = _numbers(where, table, "budgets", spec.pop("budgets"), 0, 1, lo_open=True) if "budgets" in spec else []
        knobs = _numbers(where, table, "knobs", spec.pop("knobs"), 0, None) if "knobs" in spec else []
        if (budgets or knobs) and cls.knob is None:
            raise where.error(table, "budgets" if budgets else "knobs", f"method {mname!r} has no size knob")
        if knobs and cls.knob.integer and any(float(k) != int(k) for k in knobs):
            raise where.error(table, "knobs", f"knob {cls.knob.name!r} takes integers, got {knobs!r}")
        kinds = spec.pop("kinds", [])
        if not isinstance(kinds, list) or any(k not in cls.supported_kinds() for k in kinds):
            raise where.error(table, "kinds", f"expected a list drawn from {list(cls.supported_kinds())}, got {kinds!r}")
        recipe = _recipe(where, f"{table}.recipe", spec.pop("recipe", {}))
        lr_grid = _numbers(where, table, "lr_grid", spec.pop("lr_grid"), 0, None, lo_open=True) if "lr_grid" in spec else []
        timeout = _seconds(where, table, spec.pop("timeout_s")) if "timeout_s" in spec else None
        only = spec.pop("tasks", [])
        if not isinstance(only, list) or any(t not in suite_tasks for t in only):
            raise where.error(table, "tasks", f"expected a list drawn from the suite's tasks {sorted(suite_tasks)}, "
                              f"got {only!r}")
        for key in spec:
            if key not in declared(cls):
                raise where.error(table, key, f"unknown hyper-parameter of method {mname!r}; known: "
                                  f"{sorted(declared(cls)) or 'none'} (and {sorted(METHOD_KEYS)})")
        entries.append(MethodEntry(mname, alias if alias != mname else "", spec, budgets, knobs, kinds, recipe, lr_grid, timeout,
                                   only))
    return entries


def expand(suite: Suite, registry: Registry, device: str = "cpu") -> list[Cell]:
    """Suite -> cells: task x method x kind x (budget | knob) x seed.

    Methods with several kinds (dense) run under the kinds the suite's other methods use,
    as their reference, unless the suite names kinds for them.
    """
    used_kinds = {registry.method(m.name).cls.kind for m in suite.methods
                  if len(registry.method(m.name).cls.supported_kinds()) == 1}
    cells: list[Cell] = []
    for tname, tspec in suite.tasks.items():
        task_p = registry.task(tname)
        for entry in suite.methods:
            if entry.tasks and tname not in entry.tasks:
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
            for kind in kinds:
                for budget, knob in sizes:
                    for seed in suite.seeds:
                        cells.append(Cell(
                            suite=suite.name, suite_version=suite.version, task=tname,
                            task_options=tspec["options"], method=entry.name, hparams=entry.hparams,
                            kind=kind, budget=budget, knob=knob, seed=seed, device=device,
                            recipe={**suite.recipe, **tspec["recipe"], **entry.recipe},
                            lr_grid=entry.lr_grid or suite.lr_grid, measure=suite.measure,
                            protocol=suite.protocol, timeout_s=entry.timeout_s or suite.timeout_s,
                            alias=entry.alias, versions={"method": prov.code_version, "task": task_p.code_version,
                                      **{f"metric:{m}": registry.metric(m).code_version for m in suite.measure}},
                        ))
    return cells
