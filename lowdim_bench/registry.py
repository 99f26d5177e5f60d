"""Plugin manager: built-ins and third-party plugins through one entry-point group.

Each entry point is loaded on its own and each hook implementation is called on its own, so
an import error or a raising hook is pinned to its plugin, kept with its traceback, and never
stops the others. `strict=True` (CI) turns any such failure into an error.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import pluggy

from . import api, hookspecs
from .hparams import declared

GROUP = "lowdim_bench"
BUILTIN_DIST = "lowdim-bench"
ENV_ALLOW = "LOWDIM_BENCH_PLUGINS"
ENV_MODULES = "LOWDIM_BENCH_PLUGIN_MODULES"  # importable modules loaded as plugins, uninstalled (like pytest -p)
ENV_BLOCK = "LOWDIM_BENCH_BLOCK_PLUGINS"  # plugins never loaded, by entry-point, distribution or module name
ENV_TRACE = "LOWDIM_BENCH_TRACE_PLUGINS"  # "1": print each hook call to stderr


class PluginLoadError(Exception):
    """Strict mode: at least one plugin failed to load."""


class UnknownName(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclass
class PluginInfo:
    name: str
    module: str
    dist: str | None = None
    version: str | None = None
    status: str = "ok"  # ok | broken | skipped
    error: str | None = None
    provides: list[str] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.dist == BUILTIN_DIST


@dataclass
class Provided:
    """A registered method, task or metric class and where it came from."""

    cls: type
    plugin: PluginInfo

    @functools.cached_property
    def code_version(self) -> str:
        """Computed on first use: computing every class's version at load took 1.3 of the registry's
        4.7 s (-X importtime on), and a run needs those of its own cells' methods, tasks and metrics."""
        return code_version(self.cls, self.plugin)


def _source(module: ModuleType) -> str | None:
    try:
        return inspect.getsource(module)
    except (OSError, TypeError):
        return None


@functools.lru_cache(maxsize=1024)
def _local_imports(name: str, is_package: bool, source: str | None) -> tuple[str, ...]:
    """Names of the modules `name` imports from its own top-level package (at any depth of the file:
    a helper imported inside a function counts too). Cached by source text: a changed file is parsed
    again, a module shared by many plugins' classes once."""
    top = name.split(".")[0]
    try:
        tree = ast.parse(source or "")
    except SyntaxError:
        return ()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if is_package else name.rpartition(".")[0]
                parts = pkg.split(".")
                pkg = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{pkg}.{base}" if base else pkg
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names]  # `from pkg import helper_module`
    return tuple(m for m in out if m == top or m.startswith(top + "."))


def module_closure(name: str) -> list[str]:
    """`name` and every module of its own top-level package that it imports, transitively."""
    seen: list[str] = []
    stack = [name]
    while stack:
        current = stack.pop()
        mod = sys.modules.get(current)
        if current in seen or mod is None or not getattr(mod, "__file__", None):
            continue
        seen.append(current)
        stack.extend(_local_imports(current, hasattr(mod, "__path__"), _source(mod)))
    return sorted(seen)


def code_version(cls: type, plugin: PluginInfo) -> str:
    """Distribution version plus a hash of the source of the defining module and of every module of
    the same package it imports (a helper module too).

    The hash makes cache and resume keys change when plugin code changes without a release.
    """
    digest = hashlib.sha256()
    names = module_closure(cls.__module__)
    for name in names:
        source = _source(sys.modules[name]) if name in sys.modules else None
        digest.update(name.encode() + b"\0" + (source.encode() if source is not None else b"nosource"))
    return f"{plugin.version or '0'}+{digest.hexdigest()[:10] if names else 'nosource'}"


def _block_list() -> set[str]:
    return {x.strip() for x in os.environ.get(ENV_BLOCK, "").split(",") if x.strip()}


def _tracing() -> bool:
    return os.environ.get(ENV_TRACE, "").strip() not in ("", "0")


def _trace(text: str) -> None:
    if _tracing():
        print(f"lowdim-bench plugins: {text}", file=sys.stderr, flush=True)


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ENV_ALLOW)
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


def _check_tune_grid(cls: type, name: str) -> None:
    """A solver's `tune` grid names declared settings, each value valid for it (else the plugin is broken)."""
    table = declared(cls)
    if not isinstance(cls.tune, dict):
        raise api.PluginError(f"solver {name!r}: `tune` must be a dict of setting -> list of values")
    for key, values in cls.tune.items():
        if key not in table:
            raise api.PluginError(f"solver {name!r}: `tune` names {key!r}, which is not one of its settings "
                                  f"{sorted(table)}")
        if not isinstance(values, (list, tuple)) or not values:
            raise api.PluginError(f"solver {name!r}: `tune[{key!r}]` must be a non-empty list of values")
        for v in values:
            table[key].check(f"solver {name!r} tune grid", key, v)


class Registry:
    """What the loaded plugins provide. Build with `Registry.load()` or `Registry.from_objects()`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.methods: dict[str, Provided] = {}
        self.tasks: dict[str, Provided] = {}
        self.metrics: dict[str, Provided] = {}
        self.analyses: dict[str, Provided] = {}
        self.suite_dirs: list[Path] = []

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def load(cls, strict: bool = False, allow: Iterable[str] | None = None) -> "Registry":
        """Load every entry point of the group. `allow` (or LOWDIM_BENCH_PLUGINS) limits
        third-party plugins by entry-point or distribution name; built-ins always load."""
        reg = cls()
        allowed = set(allow) if allow is not None else _allow_list()
        blocked = _block_list()
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else None
            info = PluginInfo(name=ep.name, module=ep.value, dist=dist, version=ep.dist.version if ep.dist else None)
            if ep.name in reg.plugins:
                info.name = f"{ep.name}@{dist}"
            if allowed is not None and not info.builtin and not ({ep.name, dist} & allowed):
                info.status = "skipped"
                info.error = f"not in {ENV_ALLOW}"
                reg.plugins[info.name] = info
                continue
            if {ep.name, dist, ep.value} & blocked:
                info.status = "skipped"
                info.error = f"blocked by {ENV_BLOCK}"
                reg.plugins[info.name] = info
                continue
            try:
                obj = ep.load()
            except BaseException:  # a plugin may even call sys.exit on import
                reg._broken(info, f"import of {ep.value!r} failed:\n{traceback.format_exc()}")
                continue
            reg._add(obj, info)
        for module in filter(None, (m.strip() for m in os.environ.get(ENV_MODULES, "").split(","))):
            info = PluginInfo(name=module, module=module, dist=None, version=None)
            if module in blocked:
                info.status, info.error = "skipped", f"blocked by {ENV_BLOCK}"
                reg.plugins[info.name] = info
                continue
            try:
                obj = importlib.import_module(module)
            except BaseException:
                reg._broken(info, f"import of {module!r} ({ENV_MODULES}) failed:\n{traceback.format_exc()}")
                continue
            reg._add(obj, info)
        reg._collect()
        if strict:
            reg.raise_if_broken()
        return reg

    @classmethod
    def from_objects(cls, plugins: dict[str, Any], dist: str | None = BUILTIN_DIST, version: str = "0") -> "Registry":
        """A registry from hookimpl objects, for tests: no entry points involved."""
        reg = cls()
        for name, obj in plugins.items():
            reg._add(obj, PluginInfo(name=name, module=getattr(obj, "__name__", type(obj).__name__), dist=dist, version=version))
        reg._collect()
        return reg

    def _broken(self, info: PluginInfo, error: str) -> None:
        info.status = "broken"
        info.error = (info.error + "\n" if info.error else "") + error
        self.plugins[info.name] = info

    def _add(self, obj: Any, info: PluginInfo) -> None:
        self.plugins[info.name] = info
        try:
            self.pm.register(obj, name=info.name)
        except BaseException:  # a plugin object may do anything when pluggy inspects it
            self._broken(info, f"registering failed:\n{traceback.format_exc()}")

    def _collect(self) -> None:
        """Call each plugin's hooks one by one so a failure is attributed to its plugin."""
        tables = {"register_methods": ("method", self.methods, api.Method),
                  "register_tasks": ("task", self.tasks, api.Task),
                  "register_metrics": ("metric", self.metrics, api.Metric),
                  "register_analyses": ("analysis", self.analyses, api.Analysis)}
        for hook_name, (what, table, base) in tables.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                info = self.plugins[impl.plugin_name]

                def register(cls: type, _info=info, _what=what, _table=table, _base=base) -> None:
                    _trace(f"  {_info.name}: register({getattr(cls, '__qualname__', cls)!r}) as {_what} "
                           f"{getattr(cls, 'name', '?')!r}")
                    self._register(cls, _info, _what, _table, _base)

                _trace(f"call {hook_name} of plugin {info.name!r} ({info.module})")
                try:
                    impl.function(register=register)
                except BaseException as exc:  # sys.exit or KeyboardInterrupt in a hook stops that plugin only
                    _trace(f"  {info.name}: {hook_name} raised {type(exc).__name__}: {exc}")
                    self._broken(info, f"hook {hook_name} raised:\n{traceback.format_exc()}")
        for impl in self.pm.hook.suite_paths.get_hookimpls():
            info = self.plugins[impl.plugin_name]
            _trace(f"call suite_paths of plugin {info.name!r} ({info.module})")
            try:
                for p in impl.function() or []:
                    self.suite_dirs.append(Path(p))
                    info.provides.append(f"suites:{p}")
            except BaseException:
                self._broken(info, f"hook suite_paths raised:\n{traceback.format_exc()}")

    def _register(self, cls: type, info: PluginInfo, what: str, table: dict, base: type) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise api.PluginError(f"register() expects a {base.__name__} subclass, got {cls!r}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise api.PluginError(f"{cls.__name__} has no `name`")
        if what == "method":
            bad = [k for k in cls.supported_kinds() if k not in api.KINDS]
            if bad:
                raise api.PluginError(f"method {name!r}: kind(s) {bad} not in {api.KINDS}")
            if issubclass(cls, api.Solver) != ("solve" in cls.supported_kinds()) or (
                    issubclass(cls, api.Solver) and len(cls.supported_kinds()) != 1):
                raise api.PluginError(f"method {name!r}: the kind 'solve' is for api.Solver subclasses, and they have "
                                      "no other kind")
            if issubclass(cls, api.Solver) and not (isinstance(getattr(cls, "problem", None), str) and cls.problem):
                raise api.PluginError(f"solver {name!r} has no `problem` (the name of the problem it solves)")
            if issubclass(cls, api.Solver):
                _check_tune_grid(cls, name)
        if what == "analysis" and cls.table is not None:
            owner = next((p for p in table.values() if p.cls.table == cls.table), None)
            if owner is not None:
                raise api.PluginError(f"analysis {name!r}: suite table {cls.table!r} is already read by analysis "
                                      f"{owner.cls.name!r} of plugin {owner.plugin.name!r}")
        if name in table:
            raise api.PluginError(f"{what} {name!r} is already registered by plugin {table[name].plugin.name!r}")
        table[name] = Provided(cls=cls, plugin=info)
        info.provides.append(f"{what}:{name}")

    # ---- queries --------------------------------------------------------------------------
    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.status == "broken"]

    def raise_if_broken(self) -> None:
        if self.broken:
            lines = [f"plugin {p.name!r} ({p.dist or 'no distribution'}): {p.error}" for p in self.broken]
            raise PluginLoadError("broken plugin(s) in strict mode:\n" + "\n".join(lines))

    def _lookup(self, table: dict[str, Provided], what: str, name: str) -> Provided:
        if name not in table:
            raise UnknownName(self.unknown_message(what, name, table))
        return table[name]

    def unknown_message(self, what: str, name: str, table: dict[str, Provided]) -> str:
        """Why a name is unknown: a plugin of that name failed to load, or it is a typo."""
        broken = self.broken
        owner = next((p for p in broken if name in (p.name, p.dist, p.module.split(".")[-1])
                      or p.name.startswith(f"{name}@")), None)
        if owner is not None:
            first = (owner.error or "").strip().splitlines()[-1:] or [""]
            return (f"{what} {name!r} comes from plugin {owner.name!r}, which failed to load: {first[0][:200]} "
                    "(see `lowdim-bench list plugins`)")
        text = f"unknown {what} {name!r}; known: {', '.join(sorted(table)) or 'none'}"
        if broken:
            text += (f"; {len(broken)} plugin(s) failed to load and may provide it: "
                     f"{', '.join(p.name for p in broken)} (see `lowdim-bench list plugins`)")
        return text

    def method(self, name: str) -> Provided:
        return self._lookup(self.methods, "method", name)

    def task(self, name: str) -> Provided:
        return self._lookup(self.tasks, "task", name)

    def metric(self, name: str) -> Provided:
        return self._lookup(self.metrics, "metric", name)

    def analysis(self, name: str) -> Provided:
        return self._lookup(self.analyses, "analysis", name)

    def analysis_for_table(self, table: str) -> Provided | None:
        """The analysis that owns a suite's top-level table (`[[claims]]`), if one does."""
        return next((p for p in self.analyses.values() if p.cls.table == table), None)

    def suite_files(self) -> list[Path]:
        files: list[Path] = []
        for d in self.suite_dirs:
            files.extend(sorted(d.glob("*.toml")) if d.is_dir() else [d])
        return files
