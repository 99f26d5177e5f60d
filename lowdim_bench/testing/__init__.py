"""The conformance kit: checks a plugin author runs on their own method, task, metric or analysis.

    from lowdim_bench.testing import assert_method_conforms
    assert_method_conforms(MyMethod)            # every method check; raises ConformanceError
    assert_method_conforms("lora", MyTask())    # a registered method on your task

Plain functions return CheckResult objects (check, subject, passed, expected, seen, skipped);
the assert_* forms raise with every failure spelled out. The pytest plugin
(lowdim_bench.testing.pytest_plugin, loaded automatically once lowdim-bench is installed)
adds the `lowdim_kit` fixture. docs/plugins.md lists the checks and why each exists.
"""
from __future__ import annotations

from typing import Any, Iterable

from .. import api
from .analysis_checks import ANALYSIS_CHECKS, KitArtefacts, analysis_context, run_analysis_check
from .family import KitFamilyTask
from .method_checks import METHOD_CHECKS, compare_outputs, run_method_check
from .metric_checks import METRIC_CHECKS, KIT_PROTOCOL, check_measurements, measure_context
from .results import CheckResult, ConformanceError, raise_on_failure
from .subject import KitOptions, MethodSubject, resolve_method, resolve_task
from .task_checks import TASK_CHECKS, run_task_check, sample_keys

__all__ = [
    "CheckResult", "ConformanceError", "KitOptions", "MethodSubject", "METHOD_CHECKS", "TASK_CHECKS",
    "METRIC_CHECKS", "KIT_PROTOCOL", "check_method", "assert_method_conforms", "check_task",
    "assert_task_conforms", "check_metric", "assert_metric_conforms", "run_method_check", "run_task_check",
    "compare_outputs", "measure_context", "resolve_task", "resolve_method", "sample_keys", "raise_on_failure",
    "ANALYSIS_CHECKS", "check_analysis", "assert_analysis_conforms", "run_analysis_check", "analysis_context",
    "KitArtefacts", "KitFamilyTask",
]


def _pick(names: Iterable[str] | None, known: dict) -> list[str]:
    names = list(known) if names is None else list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown check(s) {unknown}; known: {', '.join(known)}")
    return names


def check_method(method: api.Method | type[api.Method] | str, task: api.Task | str | None = None, *,
                 kind: str | None = None, size: float | None = None, checks: Iterable[str] | None = None,
                 options: KitOptions | None = None, **hparams: Any) -> list[CheckResult]:
    """Run method checks (all by default) under `kind` (default: the declared kind). `method` may
    be a registered method's name ("lora"), to check it on your task."""
    subject = MethodSubject(method, task, kind=kind, size=size, options=options, **hparams)
    return [run_method_check(c, subject) for c in _pick(checks, METHOD_CHECKS)]


def assert_method_conforms(method: api.Method | type[api.Method] | str, task: api.Task | str | None = None,
                           **kwargs: Any) -> list[CheckResult]:
    return raise_on_failure(check_method(method, task, **kwargs))


def check_task(task: api.Task | type[api.Task] | str, checks: Iterable[str] | None = None) -> list[CheckResult]:
    t = resolve_task(task)
    return [run_task_check(c, t) for c in _pick(checks, TASK_CHECKS)]


def assert_task_conforms(task: api.Task | type[api.Task] | str, checks: Iterable[str] | None = None) -> list[CheckResult]:
    return raise_on_failure(check_task(task, checks))


def check_metric(metric: api.Metric | type[api.Metric], task: api.Task | str | None = None,
                 ctx: api.MeasureContext | None = None) -> list[CheckResult]:
    """Measure once on a reference `train` cell of `task` (the smoke task by default), or on `ctx`
    for a metric that only has something to say on some cells (a merge cell's context)."""
    return [check_measurements(metric, task, ctx)]


def assert_metric_conforms(metric: api.Metric | type[api.Metric], task: api.Task | str | None = None,
                           ctx: api.MeasureContext | None = None) -> list[CheckResult]:
    return raise_on_failure(check_metric(metric, task, ctx))


def check_analysis(analysis: api.Analysis | type[api.Analysis], table: Any = None, *,
                   bad_tables: Iterable[Any] | None = None, task: api.Task | str | None = None,
                   entries: dict[str, str] | None = None, reference: str | None = "dense",
                   checks: Iterable[str] | None = None) -> list[CheckResult]:
    """Run analysis checks. `table`: a good suite table for it (required when it owns one);
    `bad_tables`: tables validate must refuse with ConfigError (default: [42] for a table owner);
    `entries` (shown name -> registered method) and `reference` describe the kit's suite."""
    kw = dict(table=table, bad_tables=bad_tables, task=task, entries=entries, reference=reference)
    return [run_analysis_check(c, analysis, **kw) for c in _pick(checks, ANALYSIS_CHECKS)]


def assert_analysis_conforms(analysis: api.Analysis | type[api.Analysis], table: Any = None,
                             **kwargs: Any) -> list[CheckResult]:
    return raise_on_failure(check_analysis(analysis, table, **kwargs))
