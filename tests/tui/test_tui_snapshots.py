"""Snapshots (pytest-textual-snapshot) of the main screen before and after a run, the reports
tab, the plugins screen with a broken plugin and the help screen. Fixed terminal size, a fixed
registry and fixed run folders, so nothing in them depends on the clock or the machine.

Update after an intended change: `python -m pytest tests/tui/test_tui_snapshots.py --snapshot-update`.
"""
from __future__ import annotations

import time

import pytest

from helpers import TINY, fixed_registry, fixed_run, grid_run, write
from lowdim_bench.tui.app import LowdimApp
from lowdim_bench.tui.widgets.reports import RunsTable

SIZE = (140, 40)
RUN_A = "20250101-000000-tiny-ui-aaaa"


@pytest.fixture
def app_factory(tmp_path, fake_plugins, monkeypatch):
    monkeypatch.setenv("LOWDIM_BENCH_STATE", str(tmp_path / "state"))
    reports = tmp_path / "reports"
    fixed_run(reports, RUN_A, "2025-01-01T00:00:00", {"fake-head": 0.8, "fake-width": 0.7})
    fixed_run(reports, "20250102-000000-tiny-ui-bbbb", "2025-01-02T00:00:00", {"fake-head": 0.8, "fake-width": 0.6},
              latency_scale=2.0)
    grid_run(reports, created="2024-12-31T00:00:00")
    suite = write(tmp_path, "tiny.toml", TINY)
    return lambda: LowdimApp([suite], reports, registry_factory=fixed_registry, devices=[])


def _listed(app) -> int:
    """Runs in the reports list (its tab is filled after the first frame)."""
    found = app.query(RunsTable)
    return len(found.first().runs) if found else 0


async def _settled(pilot) -> None:
    app = pilot.app
    deadline = time.monotonic() + 60
    while app.catalog is None or app.suite is None or _listed(app) < 3 or \
            "cells" not in str(app.query_one("#estimate").render()):  # the Setup estimate, from past runs
        assert time.monotonic() < deadline, "app did not load"
        await pilot.pause(0.05)
    await pilot.pause(0.1)


def test_main_screen_before_run(snap_compare, app_factory):
    assert snap_compare(app_factory(), terminal_size=SIZE, run_before=_settled)


def test_main_screen_after_run(snap_compare, app_factory):
    async def run_before(pilot):
        await _settled(pilot)
        app = pilot.app
        app.open_run(next(r for r in app.query_one(RunsTable).runs if r.run_id == RUN_A))
        while app.view_source != RUN_A:
            await pilot.pause(0.05)
        await pilot.pause(0.5)  # the charts redraw 150 ms after the rows settle

    assert snap_compare(app_factory(), terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("chart", [0, 2])
def test_pareto_and_memory_charts(snap_compare, app_factory, chart):
    """Several methods per kind: the Pareto chart of the selected row's kind (front, tie range,
    labels, round log ticks) and the memory bars."""
    async def run_before(pilot):
        await _settled(pilot)
        app = pilot.app
        app.open_run(next(r for r in app.query_one(RunsTable).runs if r.suite == "grid-ui"))
        while app.view_source == "live":
            await pilot.pause(0.05)
        app.query_one("#results-table").focus()
        await pilot.press("down", "down")
        app.action_show_chart(chart)
        await pilot.pause(0.5)

    assert snap_compare(app_factory(), terminal_size=SIZE, run_before=run_before)


def test_reports_screen(snap_compare, app_factory):
    async def run_before(pilot):
        await _settled(pilot)
        await pilot.press("4")
        pilot.app.query_one(RunsTable).focus()
        await pilot.press("space", "down", "space")
        await pilot.pause(0.1)

    assert snap_compare(app_factory(), terminal_size=SIZE, run_before=run_before)


def test_plugins_screen_with_broken_plugin(snap_compare, app_factory):
    async def run_before(pilot):
        await _settled(pilot)
        await pilot.press("f2")
        await pilot.pause(0.1)

    assert snap_compare(app_factory(), terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, app_factory):
    async def run_before(pilot):
        await _settled(pilot)
        await pilot.press("f1")
        await pilot.pause(0.1)

    assert snap_compare(app_factory(), terminal_size=SIZE, run_before=run_before)
