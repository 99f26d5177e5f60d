"""Full-screen views: a result row's detail, the plugins list, a comparison of two runs."""
from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from .. import model
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
        yield Label(f"[b]{method}[/] on {task} [{kind}] at {size}: {len(self.records)} records", classes="heading")
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
                          Text(model.fmt(r.get("value")), justify="right"), r.get("unit") or "",
                          Text(status, style="bold red" if status == "failed" else ""))

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
    """Per-metric deltas of run B against run A; regressions red, improvements green."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back"), Binding("r", "only_regressions", "Regressions only")]

    def __init__(self, a: model.RunInfo, b: model.RunInfo, rows: list[model.CompareRow]) -> None:
        super().__init__()
        self.a, self.b, self.rows = a, b, rows
        self.only_regressions = False

    def compose(self) -> ComposeResult:
        n = sum(r.regression for r in self.rows)
        with Vertical():
            yield Label(f"[b]A[/] {self.a.run_id}  →  [b]B[/] {self.b.run_id}   "
                        f"[red]{n} regression(s)[/]  [dim](timings beyond 10 %, counts and quality: any worse)[/]",
                        classes="heading")
            yield DataTable(id="compare-table", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.fill()

    def fill(self) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        for h in ("task", "kind", "method", "budget", "metric", "A", "B", "delta", "rel", ""):
            table.add_column(h, key=h or "flag")
        for r in self.rows:
            if self.only_regressions and not r.regression:
                continue
            style = "bold red" if r.regression else ("green" if r.improvement else "")
            flag = "▼ regression" if r.regression else ("▲" if r.improvement else "")
            table.add_row(*[Text(t, style=style) for t in r.text], Text(flag, style=style))

    def action_only_regressions(self) -> None:
        self.only_regressions = not self.only_regressions
        self.fill()
