"""The app's Results and Reports actions: filter, charts, detail, past runs, compare, export.

A mixin of `LowdimApp` (kept apart so app.py stays about layout, setup and the run); it uses the
app's widgets, `view_source`, `live_table`, `session`, `reports_dir` and its timers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import work
from textual.widgets import Input, TabbedContent

from . import chartdata, model


LIVE_SETTLE_S = 0.3  # live rows that waited for the Results tab are applied this long after it shows


class ResultsActions:
    # ---- live rows ----------------------------------------------------------------------------
    # A run's new rows rebuild the table and its charts (tens of ms of the UI thread mid-run). While
    # the Results tab is hidden they wait, and are applied once it has been in view a moment: the
    # switch paints first, and flicking through the tabs never waits for a rebuild.
    def live_rows(self, rows: model.TableData) -> None:
        self.live_table = rows
        if self.query_one(TabbedContent).active == "tab-results":
            self.results_table()

    def live_rows_on_tab(self, pane_id: str) -> None:
        if self._live_timer is not None:
            self._live_timer.stop()
            self._live_timer = None
        if pane_id == "tab-results" and self._live_waiting(self.query_one("#results-table")):
            self._live_timer = self.set_timer(LIVE_SETTLE_S, self.results_table)

    def _live_waiting(self, table: Any) -> bool:
        return self.view_source == "live" and self.live_table is not None and table.data is not self.live_table

    def results_table(self) -> Any:
        """The Results table, with any live rows that waited for it applied first."""
        table = self.query_one("#results-table")
        if self._live_waiting(table):
            table.set_data(self.live_table)
        return table

    # ---- results ------------------------------------------------------------------------------
    def on_input_changed(self, event: Input.Changed) -> None:
        """The box repaints at once; the table follows 50 ms after the last keystroke, so fast
        typing re-filters once, not once per key."""
        if event.input.id == "filter":
            if self._filter_timer is not None:
                self._filter_timer.stop()
            self._filter_timer = self.set_timer(0.05, lambda v=event.value: self._each("#results-table", "set_filter", v))

    def on_results_table_rows_changed(self, event: Any) -> None:
        """Charts redraw 150 ms after the last change (cursor moves, filter, new records)."""
        if self._chart_timer is not None:
            self._chart_timer.stop()
        data = self.query_one("#results-table").data
        colors = chartdata.method_colors(data.rows if data else event.rows)  # stable while filtering
        records = data.records if data else {}
        self._chart_timer = self.set_timer(0.15, lambda e=event: self._each("#charts", "show_rows", e.rows, e.selected,
                                                                            colors, records))

    def _each(self, selector: str, method: str, *args: Any) -> None:
        """A deferred call; the widget may be gone when the app is closing."""
        for w in self.query(selector):
            getattr(w, method)(*args)

    def on_results_table_detail_requested(self, event: Any) -> None:
        from .screens.views import DetailScreen

        data = self.results_table().data
        self.push_screen(DetailScreen(event.row, data.records.get(event.row.group, []) if data else []))

    def action_focus_filter(self) -> None:
        own = getattr(self.screen, "action_focus_filter", None)  # `/` is a priority key: a screen's own filter
        if own is not None:
            own()
            return
        self.query_one("#filter", Input).focus()
        self.query_one(TabbedContent).active = "tab-results"

    def action_cycle_chart(self) -> None:
        self.show_tab("tab-results")
        self.query_one("#charts").remove_class("hidden")
        self.notify(self.query_one("#charts").cycle(), timeout=1.5)

    def action_show_chart(self, index: int) -> None:
        self.show_tab("tab-results")
        self.query_one("#charts").remove_class("hidden")
        self.query_one("#charts").show_chart(index)

    def action_toggle_charts(self) -> None:
        self.query_one("#charts").toggle_class("hidden")

    def action_sort(self, column: str) -> None:
        self.show_tab("tab-results")
        self.results_table().sort_by(column)

    def action_show_live(self) -> None:
        self.view_source = "live"
        self.query_one("#results-table").set_data(self.live_table or model.TableData([], [], {}))
        self.show_tab("tab-results")

    def action_traceback(self) -> None:
        failures = self.query_one("#run-panel").failures
        if not failures:
            self.notify("no failure in this run")
            return
        from .screens.modals import TextScreen

        self.push_screen(TextScreen(failures[-1].text, failures[-1].traceback))

    # ---- reports ------------------------------------------------------------------------------
    def on_runs_table_open(self, event: Any) -> None:
        self.open_run(event.run)

    @work(thread=True, exclusive=True, group="open")
    def open_run(self, run: model.RunInfo) -> None:
        try:
            data = model.table_data(model.load_records(run.path))
        except Exception as e:  # a torn or foreign folder: say so, keep the app
            self.call_from_thread(self.notify, f"cannot open {run.run_id}: {e}", severity="error")
            return
        self.call_from_thread(self.show_past_run, run, data)

    def show_past_run(self, run: model.RunInfo, data: model.TableData) -> None:
        self.view_source = run.run_id
        self.query_one("#results-table").set_data(data)
        self.show_tab("tab-results")
        self.sub_title = f"viewing {run.run_id} ({run.status}, {len(data.rows)} rows)"

    def on_runs_table_compare(self, event: Any) -> None:
        self.compare_runs(event.a, event.b)

    @work(thread=True, exclusive=True, group="compare")
    def compare_runs(self, a: model.RunInfo, b: model.RunInfo) -> None:
        from .screens.views import CompareScreen

        rows = model.compare_rows(a.path, b.path)
        self.call_from_thread(self.push_screen, CompareScreen(a, b, rows))

    def action_compare_marked(self) -> None:
        self.query_one("#runs").action_compare()

    def action_export(self) -> None:
        table = self.results_table()
        if not table.shown or table.data is None:
            self.notify("nothing to export: open a run or start one", severity="warning")
            return
        source = self.view_source if self.view_source != "live" else (self.session.state.run_id if self.session else "live")
        name = source + ("-filtered" if table.filter_text.strip() else "")
        records = [r for row in table.shown for r in table.data.records.get(row.group, [])]
        self.export(records, self.reports_dir / "exports" / name, f"# export of {source} ({len(table.shown)} rows)")

    @work(thread=True, exclusive=True, group="export")
    def export(self, records: list[dict[str, Any]], out: Path, header: str) -> None:
        model.export_view(records, out, header)
        self.call_from_thread(self.notify, f"exported {len(records)} records to {out}/ "
                              "(records.parquet, summary.csv, summary.md)")
