"""Full-screen views: a result row's detail, the plugins list, a comparison of two runs."""
from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from rich.markup import escape
from textual.widgets import DataTable, Footer, Input, Label, Static

from .. import fmt, model
from ..runs import filter_compare
from .modals import TextScreen

ENV_FIELDS = ["device", "device_name", "torch_version", "python_version", "threads", "git_rev", "plugin",
              "plugin_version", "suite", "suite_version", "run_id"]


class DetailScreen(Screen[None]):
    """Every record of one row (all seeds), the cell's configuration and its environment."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back")]

    def __init__(self, row: model.Row, records: list[dict[str, Any]]) -> None:
        super().__init__()
        self.row, self.records = row, records

    def compose(self) -> ComposeResult:
        task, kind, method, size = self.row.group
        yield Label(f"[b]{escape(method)}[/] on {escape(task)}, kind [b]{escape(kind)}[/], budget {escape(size)}: "
                    f"{len(self.records)} records [dim](values in ms, MiB, counts)[/]", classes="heading")
        table = DataTable(id="detail-records", zebra_stripes=True, cursor_type="row")
        yield table
        with VerticalScroll(id="detail-info"):
            yield Static(self.info_text(), markup=False, id="detail-text")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for h in ("seed", "metric", "phase", "bs", "value", "unit", "status"):
            table.add_column(h, key=h)
        order = lambda r: (r.get("seed") or 0, r.get("metric") or "", r.get("phase") or "", r.get("batch_size") or 0)
        for r in sorted(self.records, key=order):
            status = r.get("status") or ""
            table.add_row(str(r.get("seed")), r.get("metric") or "", r.get("phase") or "",
                          "" if r.get("batch_size") is None else str(r["batch_size"]),
                          *self.value_cells(r),
                          Text(status, style="bold red" if status == "failed" else ""))

    @staticmethod
    def value_cells(r: dict[str, Any]) -> list[Any]:
        text, unit = fmt.metric_value(r.get("metric") or "", r.get("value"), r.get("unit"))
        return [Text(text, justify="right"), unit]

    def info_text(self) -> str:
        first = next((r for r in self.records if r.get("config")), self.records[0] if self.records else {})
        parts = []
        config = first.get("config")
        if config:
            try:
                config = json.dumps(json.loads(config), indent=1, sort_keys=True)
            except (TypeError, ValueError):
                pass
            parts.append("configuration\n" + str(config))
        parts.append("environment\n" + "\n".join(f"  {k}: {first.get(k)}" for k in ENV_FIELDS if k in first))
        errors = {r.get("error") for r in self.records if r.get("error")}
        parts += [f"error\n{e}" for e in errors]
        return "\n\n".join(parts)


class PluginsScreen(Screen[None]):
    """Every plugin: distribution, version, status, what it registers; Enter shows a load error."""

    BINDINGS = [Binding("escape,q,f2", "app.pop_screen", "Back"), Binding("enter", "show_error", "Error")]

    def __init__(self, catalog: model.Catalog) -> None:
        super().__init__()
        self.catalog = catalog

    def compose(self) -> ComposeResult:
        n = len(self.catalog.broken)
        yield Label(f"[b]Plugins[/]  {len(self.catalog.plugins)} loaded entries, "
                    + (f"[red]{n} failed to load (Enter: traceback)[/]" if n else "all loaded"), classes="heading")
        yield DataTable(id="plugins-table", zebra_stripes=True, cursor_type="row")
        yield Static("", id="plugin-error", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for h in ("plugin", "distribution", "version", "status", "registers"):
            table.add_column(h, key=h)
        for p in self.catalog.plugins:
            status = Text(p.status, style="bold red" if p.status == "broken" else ("dim" if p.status == "skipped" else "green"))
            table.add_row(p.name, p.dist, p.version, status, ", ".join(p.provides) or "-", key=p.name)
        self.show_first_error()

    def show_first_error(self) -> None:
        broken = self.catalog.broken
        text = f"{broken[0].name}: {broken[0].error.strip().splitlines()[-1]}" if broken else ""
        self.query_one("#plugin-error", Static).update(text)

    def action_show_error(self) -> None:
        table = self.query_one(DataTable)
        if not self.catalog.plugins:
            return
        p = self.catalog.plugins[table.cursor_row]
        if p.error:
            self.app.push_screen(TextScreen(f"plugin {p.name} ({p.status})", p.error))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_show_error()


class CompareScreen(Screen[None]):
    """Run B against run A: headline metrics first (quality, parameters, FLOPs, latency, memory),
    each judged by the gate's own rule (lowdim_bench.gate); `/` filters, `a` shows every metric,
    `r` regressions only."""

    BINDINGS = [Binding("escape,q", "back", "Back"), Binding("r", "only_regressions", "Regressions only"),
                Binding("a", "all_metrics", "All metrics"), Binding("slash", "focus_filter", "Filter")]

    def __init__(self, a: model.RunInfo, b: model.RunInfo, rows: list[model.CompareRow]) -> None:
        super().__init__()
        self.a, self.b, self.rows = a, b, rows
        self.only_regressions = False
        self.headline_only = True
        self.filter_text = ""

    def compose(self) -> ComposeResult:
        n = sum(r.regression for r in self.rows)
        w = sum(r.warn for r in self.rows)
        with Vertical():
            yield Label(f"[b]A[/] {escape(self.a.run_id)}  →  [b]B[/] {escape(self.b.run_id)}   "
                        f"[red]{n} regression(s)[/], {w} beyond tolerance but not significant  "
                        "[dim](the gate's rule: lowdim-bench compare, docs/gate.md)[/]", classes="heading")
            yield Input(placeholder="filter: words match task, kind, method, budget, metric  ( / )", id="compare-filter")
            yield DataTable(id="compare-table", zebra_stripes=True, cursor_type="row")
            yield Static("", id="compare-reason", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.fill()
        self.query_one(DataTable).focus()

    def shown(self) -> list[model.CompareRow]:
        return filter_compare(self.rows, self.filter_text, self.headline_only, self.only_regressions)

    def fill(self) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        for h in ("task", "kind", "method", "budget", "metric", "A", "B", "delta", "rel", "gate"):
            table.add_column(h, key=h)
        for r in self.shown():
            style = "bold red" if r.regression else ("yellow" if r.warn else ("green" if r.improvement else ""))
            table.add_row(*[Text(t, style=style, justify="right" if 5 <= i <= 8 else "left")
                            for i, t in enumerate(r.text)])
        what = "headline metrics (a: all)" if self.headline_only else "every metric (a: headline only)"
        self.sub_title = f"{len(self.shown())} of {len(self.rows)} rows, {what}"

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.fill()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        rows = self.shown()
        reason = rows[event.cursor_row].reason if 0 <= event.cursor_row < len(rows) else ""
        self.query_one("#compare-reason", Static).update(reason)

    def action_focus_filter(self) -> None:
        self.query_one("#compare-filter", Input).focus()

    def action_back(self) -> None:
        if self.focused is not None and self.focused.id == "compare-filter":
            self.query_one(DataTable).focus()
        else:
            self.app.pop_screen()

    def action_only_regressions(self) -> None:
        self.only_regressions = not self.only_regressions
        self.fill()

    def action_all_metrics(self) -> None:
        self.headline_only = not self.headline_only
        self.fill()
