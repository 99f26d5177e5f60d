"""The live results table: one row per task/kind/method/budget, seeds aggregated.

The rows arrive precomputed (`table.TableData`, built off the UI thread); this widget only
filters, sorts and paints them. The key columns (marks, task, kind, method, budget) are frozen,
so scrolling right never loses them. Best value per column (within its task and kind) is bold
green; the first column marks the Pareto front (★), ties (≈) and over-budget rows (!); failed
rows are red; the sorted column's header carries ▲/▼.
"""
from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from .steady_table import SteadyTable

from .. import table as tb

LEFT = {"mark", "task", "kind", "method", "size", "status"}


class ResultsTable(SteadyTable):
    BINDINGS = [
        Binding("s", "sort_next", "Sort", show=False),  # shown in the filter line: a steady footer
        Binding("S", "sort_flip", "Flip sort", show=False),
        Binding("k", "next_group", "Next kind", show=False),
        Binding("enter", "open_detail", "Detail", show=False),
    ]

    class RowsChanged(Message):
        """The shown rows (after filter and sort) or the highlighted row changed."""

        def __init__(self, rows: list[tb.Row], selected: tb.Row | None) -> None:
            super().__init__()
            self.rows, self.selected = rows, selected

    class DetailRequested(Message):
        def __init__(self, row: tb.Row) -> None:
            super().__init__()
            self.row = row

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, fixed_columns=len(tb.KEY_COLUMNS), **kw)
        self.data: tb.TableData | None = None
        self.filter_text = ""
        self.sort_key: str | None = None
        self.sort_desc = False
        self.shown: list[tb.Row] = []
        self._headers: list[str] = []
        self.can_focus = False  # until rows arrive

    # ---- data -------------------------------------------------------------------------------
    def set_data(self, data: tb.TableData) -> None:
        self.data = data
        self.refresh_rows()

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self.refresh_rows()

    def headers(self) -> list[str]:
        arrow = " ▼" if self.sort_desc else " ▲"
        out = []
        for col, header in self.data.columns:
            sorted_here = col == self.sort_key or (self.sort_key == tb.PARAMS and col in ("params_trainable",
                                                                                          "params_stored"))
            out.append(header + (arrow if sorted_here else ""))
        return out

    def refresh_rows(self) -> None:
        """Repaint keeping the highlighted row (by its group) where it was."""
        data = self.data
        if data is None:
            return
        keep = self.shown[self.cursor_row].group if self.shown and 0 <= self.cursor_row < len(self.shown) else None
        rows = tb.sort_rows(tb.filter_rows(data.rows, self.filter_text), self.sort_key, self.sort_desc)
        columns = [c for c, _ in data.columns]
        headers = self.headers()
        if headers != self._headers or [str(k.value) for k in self.columns] != columns:
            self.clear(columns=True)
            for (col, _), header in zip(data.columns, headers):
                self.add_column(header, key=col)
            self._headers = headers
        else:
            self.clear()
        for row in rows:
            self.add_row(*self._cells(row, columns), key="|".join(row.group))
        self.shown = rows
        # As tall as all the data's rows while a filter hides some (the CSS caps it at half the tab):
        # otherwise every keystroke in the filter resized the charts below, and plotext redrew
        # them, 26 ms a time under the profiler, mid-run, right when the next key came.
        self.styles.min_height = len(data.rows) + self.header_height + self.scrollbar_size_horizontal
        self.can_focus = bool(rows)  # an empty table shows nothing: Tab passes it by
        if keep is not None:
            idx = next((i for i, r in enumerate(rows) if r.group == keep), 0)
            self.move_cursor(row=idx, animate=False)
        self.post_message(self.RowsChanged(rows, self.selected()))

    def _cells(self, row: tb.Row, columns: list[str]) -> list[Text]:
        out = []
        for col, text in zip(columns, row.text):
            style = ""
            if col in row.best:
                style = "bold green"
            if col == "status" and row.failed:
                style = "bold red"
            if col == "mark":
                style = "bold yellow" if row.pareto else "yellow"
            if (col == "status" or col == "size") and row.over_budget:
                style = "bold magenta"
            if col.startswith("latency_ratio") and text.endswith("~"):
                style = "dim"
            out.append(Text(text, style=style, justify="left" if col in LEFT else "right"))
        return out

    def selected(self) -> tb.Row | None:
        if 0 <= self.cursor_row < len(self.shown):
            return self.shown[self.cursor_row]
        return None

    # ---- actions ----------------------------------------------------------------------------
    def action_sort_next(self) -> None:
        """Step through quality, parameters, latency, training memory (each best first), then
        back to the table's own order."""
        if self.data is None or not self.data.rows:
            return
        cycle = tb.sort_cycle(self.data)
        keys = [k for k, _ in cycle]
        nxt = keys[0] if self.sort_key not in keys else (keys + [None])[keys.index(self.sort_key) + 1]
        self.sort_key = nxt
        self.sort_desc = tb.best_first(nxt, self.data.rows) if nxt else False
        self.refresh_rows()
        what = dict(cycle).get(nxt, "table order")
        self.notify(f"sorted by {what}" + (f" ({'descending' if self.sort_desc else 'ascending'})" if nxt else ""),
                    timeout=2)

    def action_sort_flip(self) -> None:
        if self.sort_key is not None:
            self.sort_by(self.sort_key, not self.sort_desc)

    def sort_by(self, column: str, descending: bool = False) -> None:
        self.sort_key, self.sort_desc = column, descending
        self.refresh_rows()

    def action_next_group(self) -> None:
        """Move the cursor to the first row of the next task/kind (the charts follow it)."""
        if not self.shown:
            return
        here = self.selected().group[:2] if self.selected() else None
        groups = list(dict.fromkeys(r.group[:2] for r in self.shown))
        nxt = groups[(groups.index(here) + 1) % len(groups)] if here in groups else groups[0]
        self.move_cursor(row=next(i for i, r in enumerate(self.shown) if r.group[:2] == nxt), animate=False)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        key = str(event.column_key.value)
        if key == "mark":
            return
        self.sort_by(key, not self.sort_desc if key == self.sort_key else tb.best_first(key, self.shown))

    def action_open_detail(self) -> None:
        row = self.selected()
        if row is not None:
            self.post_message(self.DetailRequested(row))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.post_message(self.RowsChanged(self.shown, self.selected()))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_detail()
