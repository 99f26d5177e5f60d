"""Suite files: TOML (+ run overrides) -> validated Suite.

Every value is checked by the typed schema (suite_schema.py) and every name against the
registry before anything runs: method hyper-parameters and task options against their typed
declarations, analysis tables (`[[claims]]`) by the analysis that owns them. Errors name the
file, the line where we can find it, the table and the field, and say what was expected; an
error in a value that came from a command-line override names the option instead. The format is
documented in docs/suites.md; suite -> cells is plan.py.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import api
from .hparams import PluginError
from .registry import Registry, UnknownName
from .suite_schema import HARNESS_KEYS, METHOD_KEYS, SuiteModel, first_error


class SuiteError(Exception):
    """A suite (or an override) that cannot run. The message is meant for the user as is."""


@dataclass(frozen=True)
class Overrides:
    """What `lowdim-bench run` flags and the app's setup tab change in a suite. None: the suite's own."""

    budgets: list[float] | None = None
    knobs: list[float] | None = None
    seeds: list[int] | None = None
    timeout_s: float | None = None
    methods: list[str] | None = None  # entries (shown names) to keep
    tasks: list[str] | None = None
    device: str = "auto"


OPTION = {"budgets": "--budgets", "knobs": "--knobs", "seeds": "--seeds", "timeout_s": "--timeout"}


@dataclass
class TaskSpec:
    task: str  # the registered task
    options: dict[str, Any]
    recipe: dict[str, Any]


@dataclass
class MethodEntry:
    name: str  # the registered method
    alias: str  # the suite's name for the entry when it differs ("lowrank" = sltrain with delta 0)
    hparams: dict[str, Any]
    budgets: list[float]
    knobs: list[float]
    kinds: list[str]
    recipe: dict[str, Any]
    lr_grid: list[float]
    timeout_s: float | None = None
    tasks: list[str] = field(default_factory=list)  # only these of the suite's tasks (default: all)

    @property
    def shown_name(self) -> str:
        return self.alias or self.name


@dataclass
class Suite:
    path: Path
    name: str
    version: str
    description: str
    tasks: dict[str, TaskSpec]  # shown name -> spec
    methods: list[MethodEntry]
    budgets: list[float]
    seeds: list[int]
    measure: list[str]
    protocol: dict[str, Any]
    lr_grid: list[float]
    timeout_s: float
    recipe: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None  # the entry ratios and baselines are taken against
    analyses: dict[str, Any] = field(default_factory=dict)  # analysis name -> its validated options
    save: list[str] = field(default_factory=list)

    def view(self) -> api.SuiteView:
        return api.SuiteView(tuple(self.tasks), {m.shown_name: m.name for m in self.methods}, self.reference,
                             str(self.path))


class _Where:
    """Builds error messages that point at file, line, table and field (or at the override)."""

    def __init__(self, path: Path, text: str, overridden: set[tuple] = frozenset()) -> None:
        self.path, self.lines, self.overridden = path, text.splitlines(), overridden

    def _header(self, table: str, nth: int = 0) -> int | None:
        parts = [re.escape(p) for p in table.split(".")]
        pat = re.compile(r"^\s*\[+\s*\"?" + r"\"?\s*\.\s*\"?".join(parts) + r"\"?\s*\]+\s*(#.*)?$")
        hits = [i for i, ln in enumerate(self.lines) if pat.match(ln)]
        return hits[nth] if len(hits) > nth else None

    def line_of(self, table: str | None, key: str | None, nth: int = 0) -> int | None:
        start = 0
        if table:
            start = self._header(table, nth)
            if start is None:
                if key is None:  # a table written inline: find its name as a key
                    return self.line_of(None, table.split(".")[-1])
                return None
            if key is None:
                return start + 1
        if key:
            kpat = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=")
            for i in range(start + (1 if table else 0), len(self.lines)):
                if table and self.lines[i].lstrip().startswith("["):
                    break
                if kpat.match(self.lines[i]):
                    return i + 1
        return None

    def error(self, table: str | None, key: str | None, msg: str, nth: int = 0) -> SuiteError:
        option = OPTION.get(key or "") if (table, key) in self.overridden or (None, key) in self.overridden else None
        if option:
            return SuiteError(f"{option}: {msg}")
        line = self.line_of(table, key, nth)
        loc = f"{self.path}" + (f":{line}" if line else "")
        what = " ".join(x for x in [f"[{table}]" if table else "", f"field {key!r}" if key else ""] if x)
        return SuiteError(f"{loc}: {what + ': ' if what else ''}{msg}")

    def at(self, loc: tuple, msg: str) -> SuiteError:
        """An error at a pydantic location such as ("methods", "lora", "budgets", 0)."""
        names = [str(p) for p in loc if not isinstance(p, int)]
        if names and names[0] in ("tasks", "methods") and len(names) >= 2:
            table = ".".join(names[:2] + (["recipe"] if "recipe" in names[2:3] else []))
            key = names[-1] if len(names) > len(table.split(".")) else None
            return self.error(table, key, msg)
        if names and names[0] in ("protocol", "tuning", "recipe") and len(names) >= 2:
            return self.error(names[0], names[1], msg)
        return self.error(None, names[0] if names else None, msg)


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SuiteError(f"{path}: cannot read suite file: {getattr(e, 'strerror', None) or e}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise SuiteError(f"{path}: not valid TOML: nested too deeply") from None


def _as_table(raw: dict, key: str, where: _Where) -> None:
    """`tasks = ["a", "b"]` -> {"a": {}, "b": {}} (the list form), with its own errors."""
    value = raw.get(key)
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise where.error(None, key, f"expected a list of names or a table of entries, got {str(value)[:200]}")
        if len(set(value)) != len(value):
            raise where.error(None, key, f"a name is listed twice in {value!r}")
        raw[key] = {v: {} for v in value}


def _apply(raw: dict, ov: Overrides, registry: Registry) -> set[tuple]:
    """Write the overrides into the raw suite, so one schema validates both; returns what was set."""
    done: set[tuple] = set()
    for key in ("budgets", "seeds", "timeout_s"):
        value = getattr(ov, key)
        if value is not None:
            raw[key] = list(value) if isinstance(value, list) else value
            done.add((None, key))
    methods = raw.get("methods") if isinstance(raw.get("methods"), dict) else {}
    for alias, spec in methods.items():
        if not isinstance(spec, dict):
            continue
        if ov.budgets is not None or ov.knobs is not None:
            spec.pop("budgets", None)
        if ov.knobs is not None:
            name = spec.get("method", alias)
            cls = registry.methods.get(name).cls if name in registry.methods else None
            if cls is not None and cls.knob is not None:
                spec["knobs"] = list(ov.knobs)
                done.add((f"methods.{alias}", "knobs"))
    return done


def load_suite(path: str | Path, registry: Registry, overrides: Overrides | None = None) -> Suite:
    """Read and validate a suite file (with its overrides) against what the registry provides."""
    path = Path(path)
    text, raw = read_toml(path)
    where = _Where(path, text)
    for key in ("tasks", "methods"):
        _as_table(raw, key, where)
    if overrides is not None:
        where.overridden = _apply(raw, overrides, registry)
    extra = {k: raw.pop(k) for k in list(raw) if k not in HARNESS_KEYS}
    try:
        model = SuiteModel.model_validate(raw)
    except ValidationError as e:
        raise where.at(*first_error(e)) from None
    except RecursionError:
        raise SuiteError(f"{path}: nested too deeply") from None

    tasks = {name: _task(where, name, entry, registry) for name, entry in model.tasks.items()}
    methods = [_method(where, alias, entry, registry, set(tasks)) for alias, entry in model.methods.items()]
    for m in methods:
        _pairing(where, m, tasks, registry)
    for m in model.measure:
        if m not in registry.metrics:
            raise where.error(None, "measure", _unknown(registry, "metric", m))
    reference = _reference(where, model.reference, methods, registry)
    suite = Suite(path=path, name=model.name, version=str(model.version), description=model.description,
                  tasks=tasks, methods=methods, budgets=model.budgets, seeds=model.seeds, measure=model.measure,
                  protocol=model.protocol.model_dump(), lr_grid=model.tuning.lr or [], timeout_s=model.timeout_s,
                  recipe=model.recipe.fields(), reference=reference, save=list(model.save))
    suite.analyses = _analyses(where, model.analyses, extra, suite, registry)
    for name in suite.analyses:
        for need in registry.analysis(name).cls.needs:
            if need not in suite.save:
                suite.save.append(need)
    return suite


def _unknown(registry: Registry, what: str, name: str) -> str:
    """'unknown method X; known: ...', or that the plugin meant to provide it failed to load."""
    try:
        getattr(registry, what)(name)
    except UnknownName as e:
        return str(e)
    return ""


def _task(where: _Where, shown: str, entry: Any, registry: Registry) -> TaskSpec:
    table = f"tasks.{shown}"
    name = entry.task or shown
    if name not in registry.tasks:
        key = "task" if entry.task else None
        raise where.error(table if entry.task or entry.model_extra else None, key or "tasks",
                          _unknown(registry, "task", name))
    cls = registry.task(name).cls
    options = dict(entry.model_extra or {})
    _construct(where, table, cls, options)
    return TaskSpec(name, options, entry.recipe.fields())


def _method(where: _Where, alias: str, entry: Any, registry: Registry, suite_tasks: set[str]) -> MethodEntry:
    table = f"methods.{alias}"
    name = entry.method or alias
    hparams = dict(entry.model_extra or {})
    if name not in registry.methods:
        explicit = entry.method is not None
        raise where.error(table if explicit or hparams else None, "method" if explicit else "methods",
                          _unknown(registry, "method", name))
    cls = registry.method(name).cls
    if (entry.budgets or entry.knobs) and cls.knob is None:
        raise where.error(table, "budgets" if entry.budgets else "knobs", f"method {name!r} has no size knob")
    if entry.knobs and cls.knob.integer and any(float(k) != int(k) for k in entry.knobs):
        raise where.error(table, "knobs", f"knob {cls.knob.name!r} takes integers, got {entry.knobs!r}")
    if entry.knobs and any(k < cls.knob.low or (cls.knob.high is not None and k > cls.knob.high) for k in entry.knobs):
        hi = "the model's limit" if cls.knob.high is None else f"{cls.knob.high:g}"
        raise where.error(table, "knobs", f"knob {cls.knob.name!r} takes values in [{cls.knob.low:g}, {hi}], "
                          f"got {entry.knobs!r}")
    kinds = entry.kinds or []
    if any(k not in cls.supported_kinds() for k in kinds):
        raise where.error(table, "kinds", f"expected a list drawn from {list(cls.supported_kinds())}, got {kinds!r}")
    only = entry.tasks or []
    if any(t not in suite_tasks for t in only):
        raise where.error(table, "tasks", f"expected a list drawn from the suite's tasks {sorted(suite_tasks)}, "
                          f"got {only!r}")
    _construct(where, table, cls, hparams)
    return MethodEntry(name, alias if alias != name else "", hparams, entry.budgets or [], entry.knobs or [], kinds,
                       entry.recipe.fields(), entry.lr_grid or [], entry.timeout_s, only)


def _pairing(where: _Where, entry: MethodEntry, tasks: dict[str, TaskSpec], registry: Registry) -> None:
    """A solver needs its problem among the suite's tasks, and any other method a task with a model:
    the plan would otherwise drop the entry without a word."""
    cls = registry.method(entry.name).cls
    shown = [t for t in tasks if not entry.tasks or t in entry.tasks]
    problems = {t: issubclass(registry.task(tasks[t].task).cls, api.Problem) for t in shown}
    table = f"methods.{entry.shown_name}"
    if issubclass(cls, api.Solver):
        if not any(problems[t] and tasks[t].task == cls.problem for t in shown):
            raise where.error(table, "tasks" if entry.tasks else None,
                              f"solver {entry.name!r} solves problem {cls.problem!r}, which is not among the tasks it "
                              f"would run on ({', '.join(shown)}); add a [tasks.NAME] with task = {cls.problem!r}")
    elif shown and all(problems.values()):
        raise where.error(table, None, f"method {entry.name!r} needs a task with a model, and every task it would run "
                          f"on is a problem of the solve kind ({', '.join(shown)})")


def _construct(where: _Where, table: str, cls: type, settings: dict[str, Any]) -> None:
    """Build the method or task once with the suite's settings, so their typed declarations and
    the plugin's own checks run before any cell does; errors point at the setting."""
    try:
        cls(**settings)
    except Exception as e:  # a plugin's __init__ may raise anything: one line for the user
        text = str(e) if isinstance(e, PluginError) else f"{type(e).__name__}: {e}"
        key = next((k for k in settings if re.search(rf"\b{re.escape(k)}\b", text)), None)
        hint = f" (harness fields: {sorted(METHOD_KEYS)})" if "unknown" in text and issubclass(cls, api.Method) else ""
        raise where.error(table, key, f"{text[:500]}{hint}") from None


def _reference(where: _Where, named: str | None, methods: list[MethodEntry], registry: Registry) -> str | None:
    shown = [m.shown_name for m in methods]
    if named is not None:
        if named not in shown:
            raise where.error(None, "reference", f"{named!r} names no method entry of the suite; entries: {shown}")
        return named
    marked = [m.shown_name for m in methods if registry.method(m.name).cls.reference]
    return marked[0] if marked else None


def _analyses(where: _Where, named: list[str], extra: dict[str, Any], suite: Suite,
              registry: Registry) -> dict[str, Any]:
    """Validate each analysis's table up front; a top-level key no analysis owns is an error."""
    out: dict[str, Any] = {}
    for name in named:
        if name not in registry.analyses:
            raise where.error(None, "analyses", _unknown(registry, "analysis", name))
        out[name] = None
    for key, value in extra.items():
        owner = registry.analysis_for_table(key)
        if owner is None:
            tables = sorted(p.cls.table for p in registry.analyses.values() if p.cls.table)
            raise where.error(None, key, f"unknown top-level field; expected one of {sorted(HARNESS_KEYS)} "
                              f"or an analysis table {tables}")
        out[owner.cls.name] = value
    view = suite.view()
    for name, value in out.items():
        analysis = registry.analysis(name).cls()
        table = analysis.table
        if value is None and table is not None:
            raise where.error(None, "analyses", f"analysis {name!r} needs the suite table [{table}]")
        try:
            out[name] = analysis.validate(value, view)
        except api.ConfigError as e:
            raise _config_error(where, table or name, e) from None
        except Exception as e:  # a plugin's validate may raise anything: still one line for the user
            raise where.error(table, None, f"analysis {name!r} could not check its table: "
                              f"{type(e).__name__}: {e}") from None
    return out


def _config_error(where: _Where, table: str, e: api.ConfigError) -> SuiteError:
    """An analysis's ConfigError with its key ("checks[2].relation", "[1].text") placed on a line."""
    key = e.key or ""
    m = re.match(r"^\[?(\d+)\]?\.?(.*)$", key)
    nth, rest = (int(m.group(1)), m.group(2)) if m else (0, key)
    sub = re.match(r"^([A-Za-z_]+)\[(\d+)\]\.?(.*)$", rest)
    if sub:  # a nested array of tables: [[claims.checks]]
        start = where._header(table, nth)
        inner = [i for i, ln in enumerate(where.lines) if start is not None and i > start
                 and re.match(r"^\s*\[\[\s*" + re.escape(f"{table}.{sub.group(1)}") + r"\s*\]\]", ln)]
        idx = int(sub.group(2))
        line = inner[idx] + 1 if idx < len(inner) else None
        field_name = sub.group(3) or None
        if line and field_name:
            for i in range(line, len(where.lines)):
                if where.lines[i].lstrip().startswith("["):
                    break
                if re.match(r"^\s*" + re.escape(field_name) + r"\s*=", where.lines[i]):
                    line = i + 1
                    break
        loc = f"{where.path}" + (f":{line}" if line else "")
        return SuiteError(f"{loc}: [{table}] #{nth + 1} {sub.group(1)} #{idx + 1}"
                          f"{f' field {field_name!r}' if field_name else ''}: {e}")
    err = where.error(table, rest or None, str(e), nth=nth)
    if m and key:
        return SuiteError(str(err).replace(f"[{table}]", f"[{table}] #{nth + 1}", 1))
    return err
