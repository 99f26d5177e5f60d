"""Pilot tests of the daily-driver bugs: chart redraws and resizes never crash (a fuzz over every
tab, chart and size with a report open and a run live), the exit code after a crash, focus with
F5/Tab/Shift+Tab, the reports list refreshing by itself, A/B marks, sorting and the estimate."""
from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from textual.app import App
from textual.widgets import TabbedContent

from helpers import TINY, fixed_run, grid_records, grid_run, write
from lowdim_bench.tui import app as app_module
from lowdim_bench.tui import model
from lowdim_bench.tui.app import LowdimApp, RunUpdated
from lowdim_bench.tui.session import LogLine, RunState, Update
from lowdim_bench.tui.widgets.chart_pane import ChartPane
from lowdim_bench.tui.widgets.reports import RunsTable
from lowdim_bench.tui.widgets.results import ResultsTable
from test_tui_app import make_app, ready, until

SIZES = [(60, 20), (80, 24), (100, 30), (160, 48), (250, 70)]


def shown(widget) -> bool:
    """On screen: displayed, every ancestor displayed, a non-empty region."""
    return widget is not None and widget.region.area > 0 and all(
        getattr(w, "display", True) for w in [widget, *widget.ancestors_with_self])


def live_run(app, rows) -> None:
    """The UI side of a run in flight: the state, log lines and live table a RunSession posts."""
    state = RunState("running", "20250109-live", "", 10, 0, 3, 0, {"k": "tiny/fake-head[adapt] full seed=0  train 3/9"},
                     time.monotonic() - 5)
    app.session = SimpleNamespace(state=state, stop_event=threading.Event(), device="cpu", jobs=1)
    app.post_message(RunUpdated(Update(state, [LogLine("ok     tiny/fake-head[adapt] full seed=0 (1.0 s)", "ok")],
                                       model.table_data(rows))))


def test_every_tab_chart_and_size_with_a_report_open_and_a_run_live_never_raises(tmp_path, fake_plugins):
    grid_run(tmp_path / "reports")
    app = make_app(tmp_path, write(tmp_path, "tiny.toml", TINY))

    async def go():
        async with app.run_test(size=SIZES[0]) as pilot:
            await ready(app, pilot)
            await until(pilot, lambda: app.query_one(RunsTable).runs, 30, "the reports list")
            app.open_run(app.query_one(RunsTable).runs[0])
            await until(pilot, lambda: app.view_source != "live", 30, "the report")
            live_run(app, grid_records("live"))
            for w, h in SIZES:
                await pilot.resize_terminal(w, h)
                for tab in "1243":
                    await pilot.press(tab)
                    await pilot.pause(0.02)
                for _ in range(len(model.CHARTS)):  # every chart, drawn at this size
                    await pilot.press("c")
                    await pilot.pause(0.05)
                    assert app.is_running and app.return_code is None
                app.query_one(ResultsTable).focus()
                await pilot.press("down", "k")  # the charts follow another row and kind
                await pilot.pause(0.2)
            chart = app.query_one(ChartPane).current
            assert chart.data is not None and chart._cache is not None  # it drew, it did not just survive
            app.session.state.state = "finished"

    asyncio.run(go())
    assert app.return_code in (None, 0)


def test_a_chart_that_fails_to_build_shows_a_line_not_a_traceback(tmp_path, fake_plugins, monkeypatch):
    from textual_plotext.plot import Plot

    grid_run(tmp_path / "reports")
    app = make_app(tmp_path)

    def broken(self):
        raise IndexError("list index out of range")  # what plotext's legend builder raised
    monkeypatch.setattr(Plot, "build", broken)

    async def go():
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.query_one(RunsTable).runs, 30, "the reports list")
            app.open_run(app.query_one(RunsTable).runs[0])
            await until(pilot, lambda: app.view_source != "live", 30, "the report")
            await pilot.press("c")
            await pilot.pause(0.4)
            chart = app.query_one(ChartPane).current
            assert "cannot draw" in str(chart.render()) and app.is_running

    asyncio.run(go())


@pytest.mark.parametrize("crash, code", [(True, 1), (False, 0)])
def test_main_returns_non_zero_after_a_crash(monkeypatch, tmp_path, crash, code):
    def on_mount(self):
        if crash:
            raise RuntimeError("boom")
        self.exit(0)
    monkeypatch.setattr(LowdimApp, "on_mount", on_mount)
    monkeypatch.setattr(LowdimApp, "run", lambda self, **kw: App.run(self, headless=True))
    assert app_module.main(["--reports", str(tmp_path)]) == code


def test_f5_from_budgets_switches_to_run_and_tab_never_lands_on_nothing(tmp_path, fake_plugins, monkeypatch):
    from lowdim_bench.tui import session

    monkeypatch.setattr(session.RunSession, "run", lambda self: self.stop_event.wait(30))
    app = make_app(tmp_path, write(tmp_path, "tiny.toml", TINY))

    async def go():
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(app, pilot)
            for tab, n in zip("1234", (10, 3, 3, 3)):  # Setup: a full cycle of its fields
                await pilot.press(tab)
                for key in ["tab"] * n + ["shift+tab"] * n:
                    await pilot.press(key)
                    assert shown(app.focused), f"tab {tab}, {key}: focus on {app.focused}"
                    assert app.focused.__class__.__name__ != "VerticalScroll"
            await pilot.press("1")
            await pilot.click("#budgets")
            await pilot.press("f5")
            await pilot.pause(0.3)
            assert app.session is not None and app.query_one(TabbedContent).active == "tab-run"
            assert app.focused.id == "log"
            app.action_cancel()
            await until(pilot, lambda: not app.running, 10, "the cancel")

    asyncio.run(go())


def test_reports_refresh_by_themselves_and_marks_show_at_once(tmp_path, fake_plugins, monkeypatch):
    monkeypatch.setattr(app_module, "RUNS_POLL_S", 0.2)
    reports = tmp_path / "reports"
    grid_run(reports)
    app = make_app(tmp_path)

    async def go():
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: app.query_one(RunsTable).runs, 30, "the reports list")
            runs = app.query_one(RunsTable)
            await pilot.press("4")
            runs.focus()
            assert runs.get_row_at(0)[6] == "16/16"  # the interleave pseudo-cell is not a cell
            await pilot.press("space")
            assert str(runs.get_cell_at((0, 0))) == "A" and runs.columns[runs.ordered_columns[0].key].width >= 1
            fixed_run(reports / "baseline", "smoke-base", "2024-01-01T00:00:00", {"fake-head": 0.8, "fake-width": 0.7})
            await until(pilot, lambda: len(runs.runs) == 2, 10, "the new run folder, without R")
            assert [r.where for r in runs.runs] == ["", "baseline"] and runs.marked == [runs.runs[0].run_id]

    asyncio.run(go())


def test_sorting_shows_its_column_and_the_estimate_shows_before_f5(tmp_path, fake_plugins):
    reports = tmp_path / "reports"
    grid_run(reports)
    fixed_run(reports, "20250101-000000-tiny-ui-aaaa", "2025-01-01T00:00:00", {"fake-head": 0.8, "fake-width": 0.7})
    app = make_app(tmp_path, write(tmp_path, "tiny.toml", TINY))

    async def go():
        async with app.run_test(size=(160, 44)) as pilot:
            await ready(app, pilot)
            await until(pilot, lambda: "cells" in str(app.query_one("#estimate").render()), 20, "the estimate")
            text = str(app.query_one("#estimate").render())
            assert "about" in text and "20250101-000000-tiny-ui-aaaa" in text  # cell times of the suite's past run
            runs = app.query_one(RunsTable)
            app.open_run(next(r for r in runs.runs if r.suite == "grid-ui"))
            await until(pilot, lambda: app.view_source != "live", 30, "the report")
            table = app.query_one(ResultsTable)
            assert table.fixed_columns == 5
            table.focus()
            await pilot.press("s")
            qualities = [r.values["quality"] for r in table.shown]
            assert qualities == sorted(qualities, reverse=True) and "quality ▼" in table._headers
            await pilot.press("s")
            assert table.sort_key == "params" and "trainable ▲" in table._headers

    asyncio.run(go())


def test_typing_a_filter_keeps_the_table_height_so_the_charts_do_not_redraw(tmp_path, fake_plugins):
    """A filter that hides rows leaves the table as tall as all its rows: the charts below keep
    their size, so no keystroke makes plotext redraw them at a new size (26 ms a time mid-run,
    profiled)."""
    grid_run(tmp_path / "reports")
    app = make_app(tmp_path, write(tmp_path, "tiny.toml", TINY))

    async def go():
        async with app.run_test(size=(160, 48)) as pilot:
            await ready(app, pilot)
            runs = app.query_one(RunsTable)
            await until(pilot, lambda: runs.runs, 20, "the reports list")
            app.open_run(runs.runs[0])
            await until(pilot, lambda: app.view_source != "live", 30, "the report")
            table, pane = app.query_one(ResultsTable), app.query_one(ChartPane)
            await pilot.pause(0.3)
            before = (table.outer_size, pane.region)
            rows = len(table.shown)
            app.query_one("#filter").focus()
            await pilot.press(*"nothing-matches")
            await until(pilot, lambda: table.filter_text == "nothing-matches", 5, "the filter")
            await pilot.pause(0.3)
            assert table.shown == [] and rows > 0
            assert (table.outer_size, pane.region) == before
            await pilot.press(*["backspace"] * len("nothing-matches"))
            await until(pilot, lambda: len(table.shown) == rows, 5, "the rows back")
            assert (table.outer_size, pane.region) == before

    asyncio.run(go())
