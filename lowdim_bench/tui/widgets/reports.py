"""The reports browser: runs under the reports folder (nested ones too, e.g. baseline/), newest
first; mark two to compare. The app polls the folder and refreshes the list by itself."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from .. import model
from .steady_table import SteadyTable


class RunsTable(SteadyTable):
    BINDINGS = [Binding("space", "mark", "Mark", show=False), Binding("o", "open", "Open", show=False),
                Binding("d", "compare", "Compare", show=False), Binding("R", "reload", "Reload", show=False)]
    # not in the footer (the heading line lists them): a footer that changes with the tab recomposes

    class Open(Message):
        def __init__(self, run: model.RunInfo) -> None:
            super().__init__()
            self.run = run

    class Compare(Message):
        def __init__(self, a: model.RunInfo, b: model.RunInfo) -> None:
            super().__init__()
            self.a, self.b = a, b

    class Reload(Message):
        pass

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.runs: list[model.RunInfo] = []
        self.marked: list[str] = []  # run ids, oldest mark first (A), at most two

    def on_mount(self) -> None:
        self.add_column("A/B", key="mark", width=3)  # a fixed width: an empty column would hide the marks
        for h in ("run id", "in", "suite", "date", "device", "cells", "failed", "status"):
            self.add_column(h, key=h)
        self.post_message(self.Reload())  # the list, now that there is a table to show it in

    def set_runs(self, runs: list[model.RunInfo]) -> None:
        if [(r.run_id, r.done, r.failed, r.status, r.total) for r in runs] == \
                [(r.run_id, r.done, r.failed, r.status, r.total) for r in self.runs]:
            return  # a poll that found nothing new: keep the cursor and scroll as they are
        keep = self.current().run_id if self.current() else None
        self.runs = runs
        self.marked = [m for m in self.marked if any(r.run_id == m for r in runs)]
        self.clear()
        for r in runs:
            status = Text(r.status, style={"finished": "green", "running": "yellow", "cancelled": "red"}.get(r.status, ""))
            self.add_row(Text(self.mark_of(r), style="bold reverse"), r.run_id, r.where, r.suite, r.created, r.device,
                         f"{r.done}/{r.total}", Text(str(r.failed), style="red" if r.failed else ""), status,
                         key=r.run_id)
        if keep:
            idx = next((i for i, r in enumerate(runs) if r.run_id == keep), 0)
            self.move_cursor(row=idx, animate=False)

    def mark_of(self, run: model.RunInfo) -> str:
        return "AB"[self.marked.index(run.run_id)] if run.run_id in self.marked else ""

    def current(self) -> model.RunInfo | None:
        return self.runs[self.cursor_row] if self.runs and 0 <= self.cursor_row < len(self.runs) else None

    def action_mark(self) -> None:
        run = self.current()
        if run is None:
            return
        if run.run_id in self.marked:
            self.marked.remove(run.run_id)
        else:
            self.marked = (self.marked + [run.run_id])[-2:]
        for r in self.runs:
            self.update_cell(r.run_id, "mark", Text(self.mark_of(r), style="bold reverse"))

    def action_open(self) -> None:
        if self.current() is not None:
            self.post_message(self.Open(self.current()))

    def action_compare(self) -> None:
        if len(self.marked) != 2:
            self.notify("mark two runs with space first (A, then B)", severity="warning")
            return
        by_id = {r.run_id: r for r in self.runs}
        self.post_message(self.Compare(by_id[self.marked[0]], by_id[self.marked[1]]))

    def action_reload(self) -> None:
        self.post_message(self.Reload())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()


class ReportsPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("Runs  [dim]enter/o open · space mark A/B · d compare · e export · R reload "
                     "(the list refreshes by itself)[/]", classes="heading", id="reports-title")
        yield RunsTable(id="runs")
