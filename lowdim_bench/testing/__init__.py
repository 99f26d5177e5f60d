"""The conformance kit: checks a plugin author runs on their own method, task or metric.

    from lowdim_bench.testing import assert_method_conforms
    assert_method_conforms(MyMethod)            # every method check; raises ConformanceError

Plain functions return CheckResult objects (check, subject, passed, expected, seen, skipped);
the assert_* forms raise with every failure spelled out. The pytest plugin
(lowdim_bench.testing.pytest_plugin, loaded automatically once lowdim-bench is installed)
adds the `lowdim_kit` fixture. docs/plugins.md lists the checks and why each exists.
"""
from __future__ import annotations

from typing import Any, Iterable

from .. import api
from .method_checks import METHOD_CHECKS, compare_outputs, run_method_check
from .metric_checks import METRIC_CHECKS, KIT_PROTOCOL, check_measurements, measure_context
from .results import CheckResult, ConformanceError, raise_on_failure
from .solve_checks import PROBLEM_CHECKS, SOLVER_CHECKS, SolverSubject, run_solve_check
from .subject import KitOptions, MethodSubject, resolve_task
from .task_checks import TASK_CHECKS, run_task_check, sample_keys

__all__ = [
    "CheckResult", "ConformanceError", "KitOptions", "MethodSubject", "METHOD_CHECKS", "TASK_CHECKS",
    "METRIC_CHECKS", "KIT_PROTOCOL", "check_method", "assert_method_conforms", "check_task",
    "assert_task_conforms", "check_metric", "assert_metric_conforms", "run_method_check", "run_task_check",
    "compare_outputs", "measure_context", "resolve_task", "sample_keys", "raise_on_failure",
    "PROBLEM_CHECKS", "SOLVER_CHECKS", "SolverSubject",
]


def _pick(names: Iterable[str] | None, known: dict) -> list[str]:
    names = list(known) if names is None else list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown check(s) {unknown}; known: {', '.join(known)}")
    return names


def check_method(method: api.Method | type[api.Method], task: api.Task | str | None = None, *,
                 kind: str | None = None, size: float | None = None, checks: Iterable[str] | None = None,
                 options: KitOptions | None = None, **hparams: Any) -> list[CheckResult]:
    """Run method checks (all by default) under `kind` (default: the declared kind). A Solver gets
    the solve checks on its problem (`task`: a Problem, default the registered one it names)."""
    cls = method if isinstance(method, type) else type(method)
    if issubclass(cls, api.Solver):
        problem = resolve_task(task) if task is not None else None
        sub = SolverSubject(method, problem, size=None if size is None else int(size), **hparams)
        return [run_solve_check(SOLVER_CHECKS, c, sub, sub.label) for c in _pick(checks, SOLVER_CHECKS)]
    subject = MethodSubject(method, task, kind=kind, size=size, options=options, **hparams)
    return [run_method_check(c, subject) for c in _pick(checks, METHOD_CHECKS)]


def assert_method_conforms(method: api.Method | type[api.Method], task: api.Task | str | None = None,
                           **kwargs: Any) -> list[CheckResult]:
    return raise_on_failure(check_method(method, task, **kwargs))


def check_task(task: api.Task | type[api.Task] | str, checks: Iterable[str] | None = None) -> list[CheckResult]:
    t = resolve_task(task)
    if isinstance(t, api.Problem):
        return [run_solve_check(PROBLEM_CHECKS, c, t, f"problem {t.name!r}") for c in _pick(checks, PROBLEM_CHECKS)]
    return [run_task_check(c, t) for c in _pick(checks, TASK_CHECKS)]


def assert_task_conforms(task: api.Task | type[api.Task] | str, checks: Iterable[str] | None = None) -> list[CheckResult]:
    return raise_on_failure(check_task(task, checks))


def check_metric(metric: api.Metric | type[api.Metric], task: api.Task | str | None = None) -> list[CheckResult]:
    return [check_measurements(metric, task)]


def assert_metric_conforms(metric: api.Metric | type[api.Metric], task: api.Task | str | None = None) -> list[CheckResult]:
    return raise_on_failure(check_metric(metric, task))
