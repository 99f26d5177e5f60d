"""The whole plugin contract: five hooks, four of them handed a `register` callback.

A plugin is any module or object with functions marked `@hookimpl`, published under the
entry-point group `lowdim_bench`. The callback style (as in llm and pytest) keeps these
signatures stable while what a plugin may register grows.
"""
from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "lowdim_bench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_methods(register: Callable[[type], None]) -> None:
    """Register Method subclasses: call `register(MyMethod)` once per method."""


@hookspec
def register_tasks(register: Callable[[type], None]) -> None:
    """Register Task subclasses: call `register(MyTask)` once per task."""


@hookspec
def register_metrics(register: Callable[[type], None]) -> None:
    """Register Metric subclasses: call `register(MyMetric)` once per metric."""


@hookspec
def register_analyses(register: Callable[[type], None]) -> None:
    """Register Analysis subclasses: call `register(MyAnalysis)` once per analysis. An analysis runs
    after a run's cells, on its records and saved artefacts, and writes its own table."""


@hookspec
def suite_paths() -> list[str]:
    """Return folders (or .toml files) holding suites this plugin provides."""
