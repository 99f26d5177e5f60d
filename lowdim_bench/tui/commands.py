"""The command palette (ctrl+p): the main actions, one entry per suite, report, chart and sort column."""
from __future__ import annotations

from typing import Any, Callable

from textual.command import DiscoveryHit, Hit, Provider

from . import model


class AppCommands(Provider):
    """Command palette entries: the main actions, one per suite, report and chart."""

    async def discover(self):
        for name, callback, help_text in self.app.palette_commands()[:12]:
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str):
        matcher = self.matcher(query)
        for name, callback, help_text in self.app.palette_commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


def palette_commands(app: Any) -> list[tuple[str, Callable[[], Any], str]]:
    cmds: list[tuple[str, Callable[[], Any], str]] = [
        ("Start run", app.action_start, "run the Setup tab's selection (F5)"),
        ("Cancel run", app.action_cancel, "stop the cells in flight (F6)"),
        ("Compare marked reports", app.action_compare_marked, "per-metric deltas of the two marked runs"),
        ("Toggle charts", app.action_toggle_charts, "show or hide the chart pane (v)"),
        ("Show live run", app.action_show_live, "back to the run in progress in the table"),
        ("Export view", app.action_export, "write the rows shown as report files (e)"),
        ("Plugins", app.action_plugins, "every plugin and its load error (F2)"),
        ("Help", app.action_help, "keys and markers (F1)"),
    ]
    cmds += [(f"Show chart: {name}", lambda i=i: app.action_show_chart(i), "") for i, name in enumerate(model.CHARTS)]
    for info in app.catalog.suites if app.catalog else []:
        cmds.append((f"Run suite {info.name}", lambda info=info: app.run_suite(info), str(info.path)))
    for run in app.query_one("#runs").runs:
        cmds.append((f"Open report {run.run_id}", lambda run=run: app.open_run(run), f"{run.suite}, {run.status}"))
    table = app.results_table()
    for col, header in table.data.columns if table.data else []:
        if col != "mark":
            cmds.append((f"Sort by {header}", lambda col=col: app.action_sort(col), ""))
    if table.data:
        cmds.append(("Sort by parameters", lambda: app.action_sort("params"), "trainable for adapt, stored otherwise"))
    return cmds
