"""The lowdim-bench terminal app: set up a run, watch it live, browse and compare reports.

Threads: the UI thread only paints and handles keys. Loading plugins (which imports torch),
reading run folders, building summaries (Polars) and the run itself happen in Textual thread
workers; the run's events come back as `RunUpdated` messages (post_message is thread-safe).

Closing mid-run asks: stop (the cells in flight stop, finished records stay; resume later) or
finish headless (the in-app run stops and `lowdim-bench run --resume RUN_DIR` carries on
detached; see session.finish_headless). Either way the run folder is consistent on disk.
"""
from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path
from typing import Any, Callable

from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.message import Message
from textual.widgets import Header, Input, TabbedContent, TabPane, Tabs
from textual.worker import Worker, WorkerState

from . import model
from .commands import AppCommands, palette_commands
from .idle_gc import IdleCollector
from .results_actions import ResultsActions
from .session import RunSession, Update, finish_headless, prepare_processes
from .widgets.footer import QuietFooter
from .widgets.setup import SetupPane

TABS = ["tab-setup", "tab-run", "tab-results", "tab-reports"]
RUNS_POLL_S = 2.0  # the reports list follows runs started or finished elsewhere within this
MAIN_WIDGET = {"tab-setup": "#suites", "tab-run": "#log", "tab-results": "#results-table", "tab-reports": "#runs"}


class RunUpdated(Message):
    def __init__(self, update: Update) -> None:
        super().__init__()
        self.update = update


class LowdimApp(ResultsActions, App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "lowdim-bench"
    COMMANDS = App.COMMANDS | {AppCommands}
    BINDINGS = [
        Binding("f5,ctrl+r", "start", "Start", priority=True),
        Binding("f6", "cancel", "Cancel", priority=True),
        Binding("t", "traceback", "Traceback"),
        Binding("slash", "focus_filter", "Filter", show=False, priority=True),
        Binding("c", "cycle_chart", "Chart"),
        Binding("v", "toggle_charts", "Charts", show=False),
        Binding("e", "export", "Export"),
        Binding("ctrl+s", "save_selection", "Save sel.", show=False, priority=True),
        Binding("ctrl+d", "suite_defaults", "Suite defaults", show=False),
        Binding("1", "tab(0)", "Setup", show=False), Binding("2", "tab(1)", "Run", show=False),
        Binding("3", "tab(2)", "Results", show=False), Binding("4", "tab(3)", "Reports", show=False),
        Binding("escape", "focus_main", "Leave field", show=False),
        Binding("f2", "plugins", "Plugins"),
        Binding("f1,question_mark", "help", "Help"),
        Binding("q,ctrl+q", "quit", "Quit", priority=False),
    ]

    def __init__(self, suite_paths: list[Path] = (), reports_dir: Path = Path("reports"),
                 registry_factory: Callable[[], Any] | None = None, devices: list[str] | None = None,
                 jobs: int = 1) -> None:
        super().__init__()
        if "TEXTUAL_ANIMATIONS" not in os.environ:
            # No animations unless asked for (TEXTUAL_ANIMATIONS): the tab underline's 0.3 s glide
            # repaints the screen frame after frame behind every tab switch, on cores a run is using.
            self.animation_level = "none"
        prepare_processes()
        self.suite_paths, self.reports_dir = [Path(p) for p in suite_paths], Path(reports_dir)
        self.registry_factory, self.devices, self.default_jobs = registry_factory, devices, jobs
        self.registry: Any = None
        self.catalog: model.Catalog | None = None
        self.suite_info: model.SuiteInfo | None = None
        self.suite: Any = None
        self.session: RunSession | None = None
        self.after_run: str | None = None  # "exit" | "headless" once the user chose at close
        self.headless_pid: int | None = None
        self.view_source = "live"  # "live" or the run id shown in the table
        self.live_table: model.TableData | None = None
        self._live_timer: Any = None  # applies live rows that waited for the Results tab (results_actions)
        self._filter_timer: Any = None
        self._chart_timer: Any = None
        self._runs_signature: tuple | None = None
        self.collector = IdleCollector()

    # ---- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="≈")
        with TabbedContent(id="tabs"):
            with TabPane("Setup", id="tab-setup"):
                yield SetupPane(id="setup")
            # The other tabs are filled after the first frame (mount_tabs): building them first
            # (their widgets, modules and styles) took ~75 ms of a ~920 ms first paint.
            yield TabPane("Run", id="tab-run")
            yield TabPane("Results", id="tab-results")
            yield TabPane("Reports", id="tab-reports")
        yield QuietFooter()

    def mount_tabs(self) -> None:
        from .widgets.chart_pane import ChartPane
        from .widgets.reports import ReportsPane
        from .widgets.results import ResultsTable
        from .widgets.run_panel import RunPanel

        self.query_one("#tab-run").mount(RunPanel(id="run-panel"))
        self.query_one("#tab-results").mount_all([
            Input(placeholder="filter: words match task, kind, method, budget  ( / )   ·  s sort  k next kind  "
                  "c chart  enter detail", id="filter"),
            ResultsTable(id="results-table"), ChartPane(id="charts")])
        self.query_one("#tab-reports").mount(ReportsPane(id="reports"))

    def on_mount(self) -> None:
        self.sub_title = "loading plugins…"
        # The loading threads start after the first frame: importing torch in a thread holds the
        # GIL for most of a second at a time, which delayed the first paint by as long.
        self.call_after_refresh(self.after_first_frame)
        self.set_interval(1.0, self.tick)
        self.set_interval(RUNS_POLL_S, self.poll_runs)

    def after_first_frame(self) -> None:
        # The garbage collector was off until the first frame (cli.py, main below): building ~100
        # widgets triggered collections worth 0.15-0.25 s of the time to first paint. Frozen, the
        # start-up objects are never scanned again.
        gc.freeze()
        self.collector.start()  # full collections from here on only while no key is waiting (tick)
        self.mount_tabs()  # the reports list loads once its table is mounted (RunsTable.Reload)
        self.load_catalog()

    @property
    def running(self) -> bool:
        return self.session is not None and self.session.state.state in ("starting", "running")

    def tick(self) -> None:
        if self.running:
            self.query_one("#run-panel").refresh_status()
        if self.catalog is not None:  # not while torch loads: its objects are frozen once loaded
            self.collector.tick()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.InputEvent):
            self.collector.input()
        await super().on_event(event)

    # ---- background loading -------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="catalog")
    def load_catalog(self) -> None:
        if self.registry_factory is not None:
            registry = self.registry_factory()
        else:
            from ..registry import Registry

            registry = Registry.load()
        catalog = model.build_catalog(registry, self.suite_paths, self.devices)
        self.call_from_thread(self.catalog_ready, registry, catalog)

    def catalog_ready(self, registry: Any, catalog: model.Catalog) -> None:
        self.registry, self.catalog = registry, catalog
        gc.freeze()  # torch's and the plugins' objects live as long as the app: keep them out of every collection
        self.query_one(SetupPane).set_catalog(catalog)
        broken = f", {len(catalog.broken)} plugin(s) failed to load (F2)" if catalog.broken else ""
        self.sub_title = f"{len(catalog.methods)} methods, {len(catalog.tasks)} tasks{broken}"

    @work(thread=True, exclusive=True, group="runs")
    def load_runs(self) -> None:
        self._runs_signature = model.runs_signature(self.reports_dir)
        runs = model.list_runs(self.reports_dir)
        self.call_from_thread(self._each, "#runs", "set_runs", runs)

    @work(thread=True, exclusive=True, group="poll")
    def poll_runs(self) -> None:
        """Stat the run folders (no reads); reload the list when one started, moved on or finished,
        in this app or outside it (a headless run, the CLI)."""
        if model.runs_signature(self.reports_dir) != self._runs_signature:
            self.call_from_thread(self.load_runs)

    def on_runs_table_reload(self, _: Any) -> None:
        self.load_runs()

    # ---- setup --------------------------------------------------------------------------------
    def on_setup_pane_suite_chosen(self, event: SetupPane.SuiteChosen) -> None:
        self.choose_suite(event.suite)

    def choose_suite(self, info: model.SuiteInfo, use_saved: bool = True) -> None:
        from ..suite import SuiteError

        setup = self.query_one(SetupPane)
        self.suite_info, self.suite = info, None
        try:
            self.suite = model.load_suite_plan(info.path, self.registry)
        except SuiteError as e:
            setup.show_suite(info, f"cannot run: {e}")
            return
        own = model.suite_selection(self.suite, self.registry)
        own.jobs = str(self.default_jobs)
        saved = model.saved_selection(info.path) if use_saved else None
        setup.apply_selection(saved or own, own.methods)
        setup.show_suite(info, "saved selection (ctrl+d: suite's own)" if saved else
                         f"{len(own.methods)} methods × {len(own.tasks)} tasks, budgets {self.suite.budgets}, "
                         f"seeds {self.suite.seeds}")
        setup.changed()  # the cells-and-time estimate of this selection

    def action_save_selection(self) -> None:
        if self.suite_info is None:
            return
        path = model.save_selection(self.suite_info.path, self.query_one(SetupPane).current())
        self.notify(f"selection saved for {self.suite_info.name} ({path})")

    def action_suite_defaults(self) -> None:
        if self.suite_info is not None:
            self.choose_suite(self.suite_info, use_saved=False)

    def on_button_pressed(self, event) -> None:
        if event.button.id == "start":
            self.action_start()
        elif event.button.id == "cancel":
            self.action_cancel()

    # ---- running ------------------------------------------------------------------------------
    def action_start(self) -> None:
        from ..suite import SuiteError

        if self.running:
            self.notify("a run is already in progress (F6 cancels it)", severity="warning")
            return
        setup = self.query_one(SetupPane)
        if self.suite is None or self.registry is None:
            self.notify("pick a suite that loads first", severity="error")
            return
        if setup.errors:
            self.notify("fix the overrides first: " + "; ".join(setup.errors.values()), severity="error")
            return
        sel = setup.current()
        try:
            cells, meta = model.plan_cells(self.suite, self.registry, sel)
            jobs = model.parse_jobs(sel.jobs)
        except (ValueError, SuiteError) as e:
            self.notify(str(e), severity="error")
            return
        self.session = RunSession(cells, meta, self.registry, self.reports_dir, sel.device, jobs,
                                  post=lambda u: self.post_message(RunUpdated(u)))
        panel = self.query_one("#run-panel")
        panel.reset()
        panel.jobs = jobs
        panel.update_state(self.session.state)
        self.view_source, self.live_table = "live", None
        self.query_one("#results-table").set_data(model.TableData([], [], {}))
        setup.set_running(True)
        self.sub_title = f"running {meta['name']}: {len(cells)} cells"
        self.show_tab("tab-run")
        self.run_worker(self.session.run, thread=True, group="run", name="run", exit_on_error=False)

    def action_cancel(self) -> None:
        if not self.running:
            self.notify("no run in progress")
            return
        self.session.cancel()
        self.session.state.state = "stopping"
        self.query_one("#run-panel").update_state(self.session.state)
        self.notify("stopping: the cells in flight stop, finished records stay on disk")

    def on_run_updated(self, message: RunUpdated) -> None:
        u = message.update
        if self.session is not None and self.session.stop_event.is_set() and u.state.state == "running":
            u.state.state = "stopping"
        panel = self.query_one("#run-panel")
        panel.update_state(u.state)
        panel.add_lines(u.log)
        if u.state.run_id and not any(r.run_id == u.state.run_id for r in self.query_one("#runs").runs) \
                and self._runs_signature is not None:
            self._runs_signature = None  # the run folder exists now: list it at the next poll
        if u.table is not None:
            self.live_rows(u.table)
        if u.state.state in ("finished", "cancelled", "error"):
            self.sub_title = f"{u.state.state}: {u.state.done}/{u.state.total} cells, {u.state.failed} failed"

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "run" or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        self.query_one(SetupPane).set_running(False)
        self.load_runs()
        result = event.worker.result if event.state == WorkerState.SUCCESS else None
        if self.after_run == "headless" and result is not None and result.cancelled:
            proc = finish_headless(result.run_dir, self.session.device, self.session.jobs)
            self.headless_pid = proc.pid
            self.exit(0, message=f"lowdim-bench: the run goes on headless (pid {proc.pid}); "
                                 f"log {result.run_dir}/headless.log")
        elif self.after_run is not None:
            where = f"; resume with: lowdim-bench run --resume {result.run_dir}" if result and result.cancelled else ""
            self.exit(0, message=f"lowdim-bench: run stopped, finished records are in {result.run_dir if result else '?'}{where}")

    # ---- screens, tabs, palette, quit ---------------------------------------------------------
    def action_tab(self, index: int) -> None:
        self.show_tab(TABS[index])

    def show_tab(self, pane_id: str) -> None:
        """Switch tab and move the focus into it in one step. Switching alone leaves the focus on
        a widget of the old tab, which Textual then hands to a neighbour in that tab, and the
        tab switches back (F5 typed in the Budgets field stayed on Setup)."""
        self.focus_main(pane_id)
        self.query_one(TabbedContent).active = pane_id

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """Focus follows the tab, so its keys (and 1-4) work at once; a field focused on
        purpose in the new tab (the filter) keeps the focus."""
        pane = event.pane
        if self.focused is None or pane not in self.focused.ancestors:
            self.focus_main(pane.id)
        self.live_rows_on_tab(pane.id)

    def focus_main(self, pane_id: str | None) -> None:
        """The tab's main widget, or the tab strip when it cannot take the focus (an empty table,
        or a tab whose widgets are not mounted yet: a key within the first frames)."""
        if pane_id in MAIN_WIDGET:
            try:
                widget = self.query_one(MAIN_WIDGET[pane_id])
            except NoMatches:
                widget = None
            (widget if widget is not None and widget.focusable else self.query_one(TabbedContent).query_one(Tabs)).focus()

    def action_focus_main(self) -> None:
        self.focus_main(self.query_one(TabbedContent).active)

    def action_plugins(self) -> None:
        if self.catalog is None:
            self.notify("plugins are still loading")
            return
        from .screens.views import PluginsScreen

        self.push_screen(PluginsScreen(self.catalog))

    def action_help(self) -> None:
        from .screens.modals import HelpScreen

        self.push_screen(HelpScreen())

    def run_suite(self, info: model.SuiteInfo) -> None:
        self.show_tab("tab-setup")
        self.choose_suite(info)
        self.action_start()

    def palette_commands(self) -> list[tuple[str, Callable[[], Any], str]]:
        return palette_commands(self)

    async def action_quit(self) -> None:
        if not self.running:
            self.exit(0)
            return
        from .screens.modals import QuitScreen

        self.push_screen(QuitScreen(self.session.state.run_dir or str(self.reports_dir)), self.quit_choice)

    def quit_choice(self, choice: str | None) -> None:
        if choice in ("stop", "headless") and self.running:
            self.after_run = "exit" if choice == "stop" else "headless"
            self.action_cancel()
            self.notify("finishing the cells' bookkeeping, then closing…")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lowdim-bench", description="The lowdim-bench terminal app.")
    p.add_argument("suites", nargs="*", type=Path, help="extra suite files to offer beside the plugins' suites")
    p.add_argument("--reports", type=Path, default=Path("reports"), help="folder of run folders (default reports/)")
    p.add_argument("--jobs", type=int, default=1, help="parallel cells the Setup tab starts with (default 1)")
    args = p.parse_args(argv)
    gc.disable()  # until the first frame (LowdimApp.after_first_frame)
    for s in args.suites:
        if not s.exists():
            p.error(f"suite file {s} does not exist")
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: must be at least 1")
    app = LowdimApp(args.suites, args.reports, jobs=args.jobs)
    app.run()
    return exit_code(app)


def exit_code(app: App) -> int:
    """The app's return code: 0 on a normal quit, non-zero after an unhandled exception (App.run
    returns None then, which must not read as success)."""
    return int(app.return_code or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
