"""The live results table: one row per task/kind/method/budget, seeds aggregated.

The rows arrive precomputed (`model.TableData`, built off the UI thread); this widget only
filters, sorts and paints them. Best value per column (within its task and kind) is bold
green, Pareto rows carry a star in the first column, failed rows are red.
"""
from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from .. import model


class ResultsTable(DataTable):
    BINDINGS = [
        Binding("s", "sort_column", "Sort"),
        Binding("S", "sort_column(True)", "Sort desc", show=False),
        Binding("enter", "open_detail", "Detail"),
    ]

    class RowsChanged(Message):
        """The shown rows (after filter and sort) or the highlighted row changed."""

        def __init__(self, rows: list[model.Row], selected: model.Row | None) -> None:
            super().__init__()
            self.rows, self.selected = rows, selected

    class DetailRequested(Message):
        def __init__(self, row: model.Row) -> None:
            super().__init__()
            self.row = row

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.data: model.TableData | None = None
        self.filter_text = ""
        self.sort_key: str | None = None
        self.sort_desc = False
        self.shown: list[model.Row] = []

    # ---- data -------------------------------------------------------------------------------
    def set_data(self, data: model.TableData) -> None:
        self.data = data
        self.refresh_rows()

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self.refresh_rows()

    def refresh_rows(self) -> None:
        """Repaint keeping the highlighted row (by its group) where it was."""
        data = self.data
        if data is None:
            return
        keep = self.shown[self.cursor_row].group if self.shown and 0 <= self.cursor_row < len(self.shown) else None
        rows = model.sort_rows(model.filter_rows(data.rows, self.filter_text), self.sort_key, self.sort_desc)
        columns = [c for c, _ in data.columns]
        if [str(k.value) for k in self.columns] != columns:
            self.clear(columns=True)
            for col, header in data.columns:
                self.add_column(header, key=col)
        else:
            self.clear()
        for row in rows:
            self.add_row(*self._cells(row, columns), key="|".join(row.group))
        self.shown = rows
        if keep is not None:
            idx = next((i for i, r in enumerate(rows) if r.group == keep), 0)
            self.move_cursor(row=idx, animate=False)
        self.post_message(self.RowsChanged(rows, self.selected()))

    def _cells(self, row: model.Row, columns: list[str]) -> list[Text]:
        out = []
        for col, text in zip(columns, row.text):
            style = ""
            if col in row.best:
                style = "bold green"
            if col == "status" and row.failed:
                style = "bold red"
            if col == "task" and row.pareto:
                text = f"★ {text}"
            out.append(Text(text, style=style, justify="left" if col in ("task", "kind", "method", "size", "status") else "right"))
        return out

    def selected(self) -> model.Row | None:
        if 0 <= self.cursor_row < len(self.shown):
            return self.shown[self.cursor_row]
        return None

    # ---- actions ----------------------------------------------------------------------------
    def action_sort_column(self, descending: bool = False) -> None:
        """Sort by the column under the cursor; again on the same column flips the order."""
        if not self.columns or self.data is None:
            return
        key = str(list(self.columns)[self.cursor_column].value) if self.cursor_type == "cell" else None
        key = key or self._next_sort_key()
        self.sort_desc = (not self.sort_desc) if key == self.sort_key and not descending else descending
        self.sort_key = key
        self.refresh_rows()
        self.notify(f"sorted by {dict(self.data.columns)[key]} ({'descending' if self.sort_desc else 'ascending'})",
                    timeout=2)

    def _next_sort_key(self) -> str:
        """Row cursor: `s` steps through the columns, each ascending then descending."""
        keys = [c for c, _ in self.data.columns]
        if self.sort_key not in keys:
            return keys[0]
        if not self.sort_desc:
            return self.sort_key
        return keys[(keys.index(self.sort_key) + 1) % len(keys)]

    def sort_by(self, column: str, descending: bool = False) -> None:
        self.sort_key, self.sort_desc = column, descending
        self.refresh_rows()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        key = str(event.column_key.value)
        self.sort_by(key, not self.sort_desc if key == self.sort_key else False)

    def action_open_detail(self) -> None:
        row = self.selected()
        if row is not None:
            self.post_message(self.DetailRequested(row))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.post_message(self.RowsChanged(self.shown, self.selected()))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_detail()
