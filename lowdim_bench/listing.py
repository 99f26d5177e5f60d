"""`lowdim-bench list ...`: what the installed plugins provide, one line each or (--verbose) in full.

Verbose shows each setting a suite may give, from the plugin's typed declarations (type,
default, range, help), so a user writes a suite without reading plugin source; for tasks also
the quality metric, the budget scope and the dense model's parameter count (built once).
"""
from __future__ import annotations

from typing import Any

from . import api
from .hparams import declared
from .measure.params import count_params
from .registry import Provided, Registry


def _source(prov: Provided) -> str:
    return "built-in" if prov.plugin.builtin else f"{prov.plugin.dist or prov.plugin.name} {prov.plugin.version or ''}".strip()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def plugins(registry: Registry) -> list[str]:
    out = []
    for p in sorted(registry.plugins.values(), key=lambda p: p.name):
        src = "built-in" if p.builtin else f"{p.dist or '?'} {p.version or ''}".strip()
        out.append(f"{p.name:20} {p.status:8} {src:24} {', '.join(p.provides)}")
        if p.error:
            out.append("    " + p.error.rstrip().replace("\n", "\n    "))
    return out


def settings_table(cls: type) -> list[str]:
    """One line per declared setting: name, type, default, range, help."""
    rows = [(name, p.type_text(), repr(p.default), p.range_text(), p.help) for name, p in declared(cls).items()]
    if not rows:
        return ["    (no settings)"]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["    " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + (f"  {r[4]}" if r[4] else "") for r in rows]


def _method(name: str, prov: Provided, verbose: bool) -> list[str]:
    cls = prov.cls
    knob = cls.knob.name if cls.knob else "-"
    head = f"{name:18} {'/'.join(cls.supported_kinds()):24} knob={knob:8} {_source(prov):20} {_first_line(cls.description)}"
    if not verbose:
        return [head]
    lines = [head]
    if cls.knob is not None:
        open_end = "the instance's largest size" if issubclass(cls, api.Solver) else "model-dependent"
        hi = open_end if cls.knob.high is None else f"{cls.knob.high:g}"
        lines.append(f"    knob {cls.knob.name}: {'integer' if cls.knob.integer else 'real'} in [{cls.knob.low:g}, {hi}]"
                     + (f"  {cls.knob.help}" if cls.knob.help else ""))
    if cls.reference:
        lines.append("    the default reference entry of a suite")
    if issubclass(cls, api.Solver):
        lines.append(f"    solves: {cls.problem}" + (f"; tuned on the val instance over {cls.tune}" if cls.tune else "")
                     + (f"\n    source: {cls.source}" if cls.source else ""))
    return lines + settings_table(cls) + [""]


def _task(name: str, prov: Provided, verbose: bool) -> list[str]:
    cls = prov.cls
    head = f"{name:18} {_source(prov):20} {_first_line(cls.description)}"
    if not verbose:
        return [head]
    q = cls.quality
    lines = [head, f"    quality: {q.name} ({q.unit or 'no unit'}, {'higher' if q.higher_is_better else 'lower'} is better); "
                   f"budgets count: {cls.budget_scope}"]
    if issubclass(cls, api.Problem):  # no model: its size knob instead
        k = cls.size
        lines.append(f"    size knob {k.name}: {'integer' if k.integer else 'real'} >= {k.low:g}  {k.help}".rstrip())
        return lines + settings_table(cls) + [""]
    try:
        task = cls()
        model = task.pretrained("target", 0) or task.make_model(0)
        c = count_params(model)
        scoped = count_params(model, task.in_budget)
        lines.append(f"    dense model (default options): {c.total:,} parameters, {scoped.total:,} in the budget scope")
        if task.members():
            lines.append(f"    family members (merge cells): {', '.join(task.members())}")
    except Exception as e:  # a task that cannot build here still lists its options
        lines.append(f"    dense model: not built ({type(e).__name__}: {str(e)[:200]})")
    return lines + settings_table(cls) + [""]


def _simple(name: str, prov: Provided, verbose: bool) -> list[str]:
    cls = prov.cls
    extra = f" table=[{cls.table}]" if getattr(cls, "table", None) else ""
    return [f"{name:18} {_source(prov):20} {_first_line(cls.description)}{extra}"]


def lines(registry: Registry, what: str, verbose: bool = False) -> list[str]:
    if what == "plugins":
        return plugins(registry)
    if what == "suites":
        return [f"{f.stem:20} {f}" for f in registry.suite_files()]
    table: dict[str, Any] = {"methods": registry.methods, "tasks": registry.tasks, "metrics": registry.metrics,
                             "analyses": registry.analyses}[what]
    fmt = {"methods": _method, "tasks": _task}.get(what, _simple)
    return [line for name, prov in sorted(table.items()) for line in fmt(name, prov, verbose)]
