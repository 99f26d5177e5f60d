"""pytest plugin of the conformance kit (entry point `pytest11`: lowdim_bench).

Fixtures:
- `lowdim_kit`: a Kit with .method(cls_or_name, ...), .task(cls_or_name, ...), .metric(cls, ...),
  .analysis(cls, table, ...), each
  asserting conformance and returning the CheckResults; subjects are cached for the session so
  one test per check (parametrize over `lowdim_bench.testing.METHOD_CHECKS`) stays cheap.
- `lowdim_kit_options`: the KitOptions the kit uses (override the fixture to change them).
- `lowdim_smoke_task`: the default smoke task (digits-mlp).

Imports are deferred to the fixtures, so pytest sessions that do not use the kit pay nothing.
"""
from __future__ import annotations

from typing import Any

import pytest


class Kit:
    def __init__(self, options: Any) -> None:
        self.options = options
        self._subjects: dict[tuple, Any] = {}

    def subject(self, method: Any, task: Any = None, kind: str | None = None, size: float | None = None,
                **hparams: Any) -> Any:
        from lowdim_bench.testing import MethodSubject

        key = (method, id(task) if task is not None and not isinstance(task, str) else task, kind, size,
               tuple(sorted(hparams.items())))
        if key not in self._subjects:
            self._subjects[key] = MethodSubject(method, task, kind=kind, size=size, options=self.options, **hparams)
        return self._subjects[key]

    def method(self, method: Any, task: Any = None, *, checks: Any = None, kind: str | None = None,
               size: float | None = None, **hparams: Any) -> list:
        from lowdim_bench.testing import METHOD_CHECKS, raise_on_failure, run_method_check

        s = self.subject(method, task, kind, size, **hparams)
        return raise_on_failure([run_method_check(c, s) for c in (checks or list(METHOD_CHECKS))])

    def task(self, task: Any, *, checks: Any = None) -> list:
        from lowdim_bench.testing import assert_task_conforms

        return assert_task_conforms(task, checks)

    def metric(self, metric: Any, task: Any = None) -> list:
        from lowdim_bench.testing import assert_metric_conforms

        return assert_metric_conforms(metric, task)

    def analysis(self, analysis: Any, table: Any = None, **kwargs: Any) -> list:
        from lowdim_bench.testing import assert_analysis_conforms

        return assert_analysis_conforms(analysis, table, **kwargs)


@pytest.fixture(scope="session")
def lowdim_kit_options() -> Any:
    from lowdim_bench.testing import KitOptions

    return KitOptions()


@pytest.fixture(scope="session")
def lowdim_kit(lowdim_kit_options: Any) -> Kit:
    return Kit(lowdim_kit_options)


@pytest.fixture(scope="session")
def lowdim_smoke_task() -> Any:
    from lowdim_bench.testing import resolve_task

    return resolve_task(None)
