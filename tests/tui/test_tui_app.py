"""The app driven by Textual's pilot: a real run through the runner's worker processes, cancel,
close mid-run (stop / finish headless), past reports, compare, export, overrides, screens."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import polars as pl
import pytest
from textual.css.query import NoMatches
from textual.widgets import TabbedContent

from helpers import SLOW, TINY, fixed_registry, fixed_run, write
from lowdim_bench import report
from lowdim_bench.tui.app import LowdimApp
from lowdim_bench.tui.screens.modals import HelpScreen, QuitScreen, TextScreen
from lowdim_bench.tui.screens.views import CompareScreen, DetailScreen, PluginsScreen
from lowdim_bench.tui.widgets.chart_pane import ChartPane
from lowdim_bench.tui.widgets.reports import RunsTable
from lowdim_bench.tui.widgets.results import ResultsTable
from lowdim_bench.tui.widgets.run_panel import RunPanel
from lowdim_bench.tui.widgets.setup import SetupPane

SIZE = (150, 45)


async def until(pilot, cond, timeout: float = 90.0, what: str = "") -> None:
    """Wait for cond(); a widget it asks for may not be mounted yet (the tabs but Setup are filled
    after the first frame)."""
    deadline = time.monotonic() + timeout
    while not _holds(cond):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


def _holds(cond) -> bool:
    try:
        return bool(cond())
    except NoMatches:
        return False


async def ready(app, pilot) -> None:
    await until(pilot, lambda: app.catalog is not None and app.suite is not None, 60, "catalog and suite")


def make_app(tmp_path: Path, *suites: Path, registry_factory=fixed_registry) -> LowdimApp:
    os.environ["LOWDIM_BENCH_STATE"] = str(tmp_path / "state")
    return LowdimApp(list(suites), tmp_path / "reports", registry_factory=registry_factory, devices=[])


@pytest.mark.slow
def test_complete_run_fills_table_and_charts(tmp_path, fake_plugins):
    suite = write(tmp_path, "tiny.toml", TINY)
    app = make_app(tmp_path, suite)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await ready(app, pilot)
            assert app.suite_info.name == "tiny-ui"
            await pilot.click("#budgets")
            await pilot.press(*"0.5")  # overrides the suite's [0.3, 0.6]
            await pilot.click("#jobs")
            await pilot.press("backspace", "2")
            await pilot.press("f5")
            await until(pilot, lambda: app.session is not None and not app.running, 240, "the run")
            app.results_table()  # the Run tab is in view: the live rows wait for the Results tab
            await pilot.pause(0.4)  # the charts follow the rows 150 ms later
            check_complete_run(app)

    asyncio.run(go())


def check_complete_run(app) -> None:
    state = app.session.state
    assert (state.state, state.done, state.total, state.failed) == ("finished", 4, 4, 0)
    table = app.results_table()  # what the Results tab shows once opened (live rows wait while it is hidden)
    groups = {r.group for r in table.shown}
    cells = {("tiny", "adapt", "fake-head", "full"), ("tiny", "compress", "fake-width", "0.5")}
    assert groups == cells | {("tiny", "adapt", report.BEFORE, "full")}  # the base on the target, per seed
    assert all(r.values["n_seeds"] == 2 and r.values["quality_std"] is not None for r in table.shown)
    assert all(len(table.data.records[g]) > 10 for g in cells)  # every record kept for the detail view
    charts = {c.id: c.data for c in app.query_one(ChartPane).charts}
    # the charts follow the selected row's task and kind (the first row: adapt)
    assert [p.method for p in charts["chart-params"].points] == ["fake-head"]
    assert charts["chart-params"].kind == "adapt" and charts["chart-params"].others == [("tiny", "compress")]
    memory = charts["chart-memory"]  # every kind of the task
    assert len(memory.labels) == 2 and all(v > 0 for v in memory.parts["parameters"])
    assert [line.batch for line in charts["chart-batch"].lines] == [[1, 4]]
    lines = app.query_one(RunPanel).lines
    assert lines[-1].startswith("run finished: 4 ok, 0 failed") and sum(x.startswith("ok ") for x in lines) == 4
    on_disk = report.load(state.run_dir)
    assert on_disk.filter(pl.col("metric") == "quality").height == 4
    assert json.loads((Path(state.run_dir) / "run.json").read_text())["status"] == "finished"


def test_the_first_frame_builds_the_setup_tab_only_and_the_other_tabs_follow(tmp_path, fake_plugins, monkeypatch):
    """What nobody sees yet waits for the first frame: the Run, Results and Reports tabs (their
    widgets, modules and styles) are mounted right after it."""
    app = make_app(tmp_path)
    before = {}
    real = LowdimApp.mount_tabs

    def spy(self):
        before["tabs"] = {t: len(self.query_one(f"#{t}").children) for t in ("tab-setup", "tab-run", "tab-results",
                                                                              "tab-reports")}
        real(self)

    monkeypatch.setattr(LowdimApp, "mount_tabs", spy)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.query("#runs") and app.query("#log") and app.query("#charts"), 30, "tabs")
            assert before["tabs"] == {"tab-setup": 1, "tab-run": 0, "tab-results": 0, "tab-reports": 0}
            await pilot.press("3")
            assert app.query_one(TabbedContent).active == "tab-results"

    asyncio.run(go())


def test_live_rows_wait_while_the_results_tab_is_hidden(tmp_path, fake_plugins):
    """A run's table update rebuilds the Results table (and its charts) only when that tab is in
    view, or after the switch to it has painted: hidden, it cost the tab in view its keys."""
    from helpers import grid_records
    from lowdim_bench.tui import model
    from lowdim_bench.tui.app import RunUpdated
    from lowdim_bench.tui.session import RunState, Update

    app = make_app(tmp_path)
    rows = model.table_data(grid_records("r-live"))

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.catalog is not None, 60, "catalog")
            table = app.query_one(ResultsTable)
            app.show_tab("tab-run")
            app.post_message(RunUpdated(Update(RunState("running"), [], rows)))
            await pilot.pause(0.2)
            assert table.data is None and app.live_table is rows  # kept, not painted
            await pilot.press("3", "2")  # flicking through: the rows keep waiting
            await pilot.pause(0.5)
            assert table.data is None
            await pilot.press("3")
            await until(pilot, lambda: table.data is rows, 10, "the rows after the switch")
            assert len(table.shown) == len(rows.rows)
            more = model.table_data(grid_records("r-live")[:40])
            app.post_message(RunUpdated(Update(RunState("running"), [], more)))
            await until(pilot, lambda: table.data is more, 10, "rows in view at once")

    asyncio.run(go())


def _slow_run(tmp_path, monkeypatch, choice: str):
    """Start a run of slow cells, close the app once one cell finished, answer `choice`.

    The real registry (entry points + fakeplugins), as the headless `--resume` process loads
    it: cell keys hash plugin versions, so app and CLI must see the same plugins."""
    monkeypatch.setenv("FAKE_SLOW_SECONDS", "2")
    suite = write(tmp_path, "slow.toml", SLOW)
    app = make_app(tmp_path, suite, registry_factory=None)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await ready(app, pilot)
            await pilot.press("f5")
            await until(pilot, lambda: app.session is not None and app.session.state.done >= 1, 120, "a finished cell")
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, QuitScreen), 10, "the quit dialog")
            await pilot.press(choice)
            await until(pilot, lambda: not app.is_running, 60, "the app to close")

    asyncio.run(go())
    return app


@pytest.mark.slow
def test_close_mid_run_and_stop_keeps_finished_records(tmp_path, fake_plugins, monkeypatch):
    app = _slow_run(tmp_path, monkeypatch, "s")
    run_dir = Path(app.session.state.run_dir)
    finished = [json.loads(x) for x in (run_dir / "cells.jsonl").read_text().splitlines()]
    assert 1 <= len(finished) < 3 and all(c["status"] == "ok" for c in finished)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "cancelled"
    df = pl.read_parquet(run_dir / "records.parquet")
    assert sorted(df.filter(pl.col("metric") == "quality")["cell_key"]) == sorted(c["key"] for c in finished)
    assert app.headless_pid is None


@pytest.mark.slow
def test_close_mid_run_and_finish_headless_completes_the_run(tmp_path, fake_plugins, monkeypatch):
    app = _slow_run(tmp_path, monkeypatch, "h")
    run_dir = Path(app.session.state.run_dir)
    assert app.headless_pid is not None
    _, status = os.waitpid(app.headless_pid, 0)  # the resume process, started detached by the app
    assert os.waitstatus_to_exitcode(status) == 0, (run_dir / "headless.log").read_text()
    keys = [json.loads(x)["key"] for x in (run_dir / "cells.jsonl").read_text().splitlines()]
    assert len(keys) == 3 and len(set(keys)) == 3  # every cell once: finished ones were not redone
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert "already done" in (run_dir / "headless.log").read_text()


def test_open_past_report_detail_compare_and_export(tmp_path, fake_plugins):
    reports = tmp_path / "reports"
    fixed_run(reports, "20250101-000000-tiny-ui-aaaa", "2025-01-01T00:00:00", {"fake-head": 0.8, "fake-width": 0.7})
    fixed_run(reports, "20250102-000000-tiny-ui-bbbb", "2025-01-02T00:00:00", {"fake-head": 0.8, "fake-width": 0.6},
              latency_scale=2.0)
    app = make_app(tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: len(app.query_one(RunsTable).runs) == 2, 30, "the reports list")
            await pilot.press("4")
            runs = app.query_one(RunsTable)
            runs.focus()
            assert [r.run_id for r in runs.runs] == ["20250102-000000-tiny-ui-bbbb", "20250101-000000-tiny-ui-aaaa"]
            await pilot.press("down", "enter")  # the older run
            await until(pilot, lambda: app.view_source == "20250101-000000-tiny-ui-aaaa", 30, "the run to open")
            table = app.query_one(ResultsTable)
            assert [r.group[2] for r in table.shown] == ["fake-head", "fake-width"]
            head = table.shown[0]
            assert head.values["quality"] == pytest.approx(0.805) and head.values["n_seeds"] == 2
            assert not head.pareto and not head.best  # alone in its task and kind: no front, nothing to beat
            table.focus()
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, DetailScreen), 10, "the detail view")
            assert len(app.screen.records) == 20 and "git_rev: abc123" in app.screen.info_text()
            await pilot.press("escape")
            await pilot.press("e")
            out = reports / "exports" / "20250101-000000-tiny-ui-aaaa"
            await until(pilot, lambda: (out / "summary.md").exists(), 30, "the export")
            assert pl.read_parquet(out / "records.parquet").height == 40 and (out / "summary.csv").exists()
            await pilot.press("4")
            runs.focus()
            await pilot.press("space", "up", "space", "d")  # A = older, B = newer
            await until(pilot, lambda: isinstance(app.screen, CompareScreen), 30, "the comparison")
            rows = {(r.text[2], r.text[4].split(" ")[0]): r for r in app.screen.rows}
            assert rows[("fake-width", "quality")].regression
            assert not rows[("fake-head", "quality")].regression
            assert rows[("fake-head", "latency_p50[inference]@bs1")].regression  # twice as slow
            assert not rows[("fake-head", "params_trainable")].regression
            assert rows[("fake-head", "latency_p50[inference]@bs1")].text[5:7] == ["1", "2"]  # ms, not seconds
            shown = app.screen.query_one("#compare-table").row_count
            await pilot.press("slash", *"width")  # the filter
            await until(pilot, lambda: app.screen.query_one("#compare-table").row_count < shown, 5, "the filter")
            assert all("fake-width" in r.text for r in app.screen.shown())

    asyncio.run(go())


def test_overrides_are_validated_as_you_type_and_block_start(tmp_path, fake_plugins):
    app = make_app(tmp_path, write(tmp_path, "tiny.toml", TINY))

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await ready(app, pilot)
            await pilot.click("#budgets")
            await pilot.press(*"0.5, 2")
            setup = app.query_one(SetupPane)
            assert setup.errors == {"budgets": "budget '2' is not a fraction in (0, 1]"}
            await pilot.click("#seeds")
            await pilot.press(*"1 x")
            assert setup.errors["seeds"] == "seed 'x' is not an integer"
            await pilot.press("f5")
            assert app.session is None
            await pilot.press("backspace", "backspace")
            await pilot.click("#budgets")
            await pilot.press("end", "backspace", "backspace", "backspace")
            assert setup.errors == {}
            assert setup.current().budgets == "0.5" and setup.current().seeds == "1"

    asyncio.run(go())


def test_setup_groups_methods_and_marks_broken_plugins_and_saves_selection(tmp_path, fake_plugins):
    app = make_app(tmp_path, write(tmp_path, "tiny.toml", TINY))

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await ready(app, pilot)
            from textual.widgets import SelectionList

            ml = app.query_one("#methods", SelectionList)
            prompts = [str(ml.get_option_at_index(i).prompt) for i in range(ml.option_count)]
            assert "adapt · fake-dist 0.1" in prompts and "compress · fake-dist 0.1" in prompts
            assert any("plugin ghost failed to load" in p for p in prompts)
            assert sorted(ml.selected) == ["fake-head", "fake-width"]
            ml.deselect("fake-head")
            await pilot.press("ctrl+s")
            app.choose_suite(app.suite_info)
            assert ml.selected == ["fake-width"]  # the saved selection came back
            await pilot.press("ctrl+d")
            assert sorted(ml.selected) == ["fake-head", "fake-width"]  # the suite's own
            await pilot.press("f2")
            assert isinstance(app.screen, PluginsScreen)
            table = app.screen.query_one("#plugins-table")
            table.move_cursor(row=[p.name for p in app.catalog.plugins].index("ghost"))
            await pilot.press("enter")
            assert isinstance(app.screen, TextScreen) and "No module named 'ghost_plugin'" in app.screen.body
            await pilot.press("escape", "escape", "f1")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            names = [n for n, _, _ in app.palette_commands()]
            assert "Run suite tiny-ui" in names and "Compare marked reports" in names
            assert "Show chart: memory breakdown" in names

    asyncio.run(go())
