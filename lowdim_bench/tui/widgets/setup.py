"""Run setup: suite, methods (by kind and plugin), tasks, device, budget/seed/jobs overrides.

Overrides are validated on every keystroke (model.parse_*); the error names the bad value and
the Start action refuses to run while one is shown.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Label, OptionList, Select, SelectionList, Static
from textual.widgets.option_list import Option
from textual.widgets.selection_list import Selection as Pick

from .. import model


class SetupPane(Horizontal):
    class SuiteChosen(Message):
        def __init__(self, suite: model.SuiteInfo) -> None:
            super().__init__()
            self.suite = suite


    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.catalog: model.Catalog | None = None
        self.errors: dict[str, str] = {}
        self._estimate_timer: Any = None

    def compose(self) -> ComposeResult:
        with Vertical(id="suite-col"):
            yield Label("Suites", classes="heading")
            yield OptionList(id="suites")
            yield Static("loading plugins…", id="suite-info")
        with Vertical(id="method-col"):
            yield Label("Methods (by kind · plugin)", classes="heading")
            yield SelectionList(id="methods")
        with VerticalScroll(id="options-col", can_focus=False):  # its fields take the focus, not it
            yield Label("Tasks", classes="heading")
            yield SelectionList(id="tasks")
            yield Label("Device", classes="heading")
            yield Select([("auto", "auto")], value="auto", allow_blank=False, id="device")
            yield Label("Budgets (override, e.g. 0.05, 0.1)", classes="heading")
            yield Input(placeholder="suite's own", id="budgets")
            yield Label("Seeds (override, e.g. 0 1 2)", classes="heading")
            yield Input(placeholder="suite's own", id="seeds")
            yield Label("Parallel jobs (CPU)", classes="heading")
            yield Input("1", id="jobs")
            yield Static("", id="validation")
            yield Static("", id="estimate")
            with Horizontal(id="run-buttons"):
                yield Button("Start  F5", id="start", variant="success")
                yield Button("Cancel  F6", id="cancel", variant="error", disabled=True)

    # ---- filling ------------------------------------------------------------------------------
    def set_catalog(self, catalog: model.Catalog) -> None:
        self.catalog = catalog
        suites = self.query_one("#suites", OptionList)
        suites.clear_options()
        for i, s in enumerate(catalog.suites):
            mark = "  ✗ unreadable" if s.error else ""
            suites.add_option(Option(f"{s.name}  [dim]{s.source}[/]{mark}", id=str(i)))
        device = self.query_one("#device", Select)
        device.set_options([(d, d) for d in catalog.devices])
        device.value = "auto"
        tasks = self.query_one("#tasks", SelectionList)
        tasks.clear_options()
        tasks.add_options([Pick(t, t, False) for t in catalog.tasks])
        self.fill_methods(set())
        if catalog.suites:
            suites.highlighted = 0

    def fill_methods(self, selected: set[str], entries: list[str] | None = None) -> None:
        """Group headers are disabled rows. Suite variants (entries that are not registered
        method names, e.g. `lora-r8`) are listed under their method's group."""
        cat = self.catalog
        ml = self.query_one("#methods", SelectionList)
        ml.clear_options()
        picks: list[Pick] = []
        variants = [e for e in (entries or []) if e not in {m.name for m in cat.methods}]
        for kind, plugin, methods in cat.method_groups():
            picks.append(Pick(f"[b]{kind}[/] · {plugin}", f"__group:{kind}:{plugin}", False, disabled=True))
            for m in methods:
                picks.append(Pick(f"  {m.name}  [dim]{m.knob}[/]", m.name, m.name in selected))
        if variants:
            picks.append(Pick("[b]suite variants[/]", "__group:variants", False, disabled=True))
            picks += [Pick(f"  {v}", v, v in selected) for v in variants]
        for p in cat.broken:
            picks.append(Pick(f"[red]✗ plugin {p.name} failed to load[/] [dim](F2)[/]", f"__broken:{p.name}", False,
                              disabled=True))
        ml.add_options(picks)

    def apply_selection(self, sel: model.Selection, entries: list[str]) -> None:
        self.fill_methods(set(sel.methods), entries)
        tasks = self.query_one("#tasks", SelectionList)
        tasks.deselect_all()
        for t in sel.tasks:
            if t in self.catalog.tasks:
                tasks.select(t)
        if sel.device in self.catalog.devices:
            self.query_one("#device", Select).value = sel.device
        self.query_one("#budgets", Input).value = sel.budgets
        self.query_one("#seeds", Input).value = sel.seeds
        self.query_one("#jobs", Input).value = sel.jobs

    def current(self) -> model.Selection:
        methods = [v for v in self.query_one("#methods", SelectionList).selected if not v.startswith("__")]
        device = self.query_one("#device", Select).value
        return model.Selection(methods=methods, tasks=list(self.query_one("#tasks", SelectionList).selected),
                               device=str(device), budgets=self.query_one("#budgets", Input).value,
                               seeds=self.query_one("#seeds", Input).value, jobs=self.query_one("#jobs", Input).value)

    def show_suite(self, suite: model.SuiteInfo, note: str = "") -> None:
        text = f"[b]{suite.name}[/]  [dim]{suite.path.name} · {suite.source}[/]\n{suite.description}"
        if suite.error:
            text += f"\n[red]{suite.error}[/]"
        self.query_one("#suite-info", Static).update(text + (f"\n[dim]{note}[/]" if note else ""))

    # ---- cells-and-time estimate --------------------------------------------------------------
    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        self.changed()

    def changed(self) -> None:
        """Re-estimate 300 ms after the last change (typing a seed list estimates once)."""
        if self._estimate_timer is not None:
            self._estimate_timer.stop()
        self._estimate_timer = self.set_timer(0.3, self.start_estimate)

    def start_estimate(self) -> None:
        app = self.app
        if app.suite is None or app.registry is None or app.running:
            return
        if self.errors:
            self.show_estimate("")
            return
        self.estimate(app.suite, app.registry, app.reports_dir, self.current())

    @work(thread=True, exclusive=True, group="estimate")
    def estimate(self, suite: Any, registry: Any, reports_dir: Path, sel: model.Selection) -> None:
        """Cells of the selection (the same planning F5 uses) and their time from past runs."""
        try:
            cells, _ = model.plan_cells(suite, registry, sel)
            jobs = model.parse_jobs(sel.jobs)
        except Exception as e:  # the selection cannot run: F5 will say why; say it here too
            text = f"[red]{escape(str(e))}[/]"
        else:
            durations, source = model.past_durations(reports_dir, suite.name)
            text = escape(model.estimate(cells, durations, source, jobs))
        self.app.call_from_thread(self.show_estimate, text)

    def show_estimate(self, text: str) -> None:
        if self.is_mounted:
            self.query_one("#estimate", Static).update(text)

    # ---- validation as you type ---------------------------------------------------------------
    def on_input_changed(self, event: Input.Changed) -> None:
        self.changed()
        parse = {"budgets": model.parse_budgets, "seeds": model.parse_seeds, "jobs": model.parse_jobs}.get(event.input.id)
        if parse is None:
            return
        try:
            parse(event.value)
            self.errors.pop(event.input.id, None)
            event.input.remove_class("invalid")
        except ValueError as e:
            self.errors[event.input.id] = str(e)
            event.input.add_class("invalid")
        self.query_one("#validation", Static).update("\n".join(f"[red]{m}[/]" for m in self.errors.values()))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if self.catalog is not None and event.option_list.id == "suites" and event.option.id is not None:
            self.post_message(self.SuiteChosen(self.catalog.suites[int(event.option.id)]))

    def set_running(self, running: bool) -> None:
        self.query_one("#start", Button).disabled = running
        self.query_one("#cancel", Button).disabled = not running
