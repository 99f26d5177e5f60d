"""Small modal screens: a scrollable text (tracebacks), the close-mid-run question, help."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class TextScreen(ModalScreen[None]):
    """A title and a long plain text (a traceback), scrollable; Escape closes."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text, self.body = title, text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(self.title_text, classes="heading")
            with VerticalScroll():
                yield Static(self.body, markup=False, id="text-body")
            yield Label("[dim]Esc to close[/]")


class QuitScreen(ModalScreen[str]):
    """Closing mid-run: stop (finished records stay, resume later) or finish headless."""

    BINDINGS = [Binding("s", "choose('stop')", "Stop"), Binding("h", "choose('headless')", "Finish headless"),
                Binding("escape", "choose('stay')", "Keep running")]

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("A run is in progress.", classes="heading")
            yield Static(f"Every finished cell is already on disk in\n{self.run_dir}\n\n"
                         "[b]s[/] stop now: the cells in flight stop; resume later with\n"
                         "    lowdim-bench run --resume RUN_DIR\n"
                         "[b]h[/] finish headless: the app closes and `lowdim-bench run --resume`\n"
                         "    carries on in the background (the cell in flight restarts there),\n"
                         "    writing RUN_DIR/headless.log\n"
                         "[b]Esc[/] keep running")
            with Horizontal(classes="buttons"):
                yield Button("Stop (s)", id="stop", variant="error")
                yield Button("Finish headless (h)", id="headless", variant="primary")
                yield Button("Keep running (Esc)", id="stay")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

    def action_choose(self, what: str) -> None:
        self.dismiss(what)


KEYS = [
    ("F5 / ctrl+r", "anywhere", "start the run set up on the Setup tab (switches to the Run tab)"),
    ("F6", "anywhere", "cancel the run (the cells in flight stop; finished records stay)"),
    ("1 2 3 4", "not typing", "Setup, Run, Results, Reports tab"),
    ("t", "anywhere", "traceback of the last failure"),
    ("s", "results", "sort: quality, parameters, latency, training memory (best first), table order"),
    ("S / click header", "results", "reverse the sort / sort by that column"),
    ("k", "results", "jump to the next task/kind (the charts follow the selected row)"),
    ("enter", "results", "detail of the row: every record, configuration, environment"),
    ("/", "results", "filter rows (words match task, kind, method, budget)"),
    ("c / v", "results", "next chart / show or hide the charts"),
    ("enter / o", "reports", "open the run in the results table and charts"),
    ("space, d", "reports", "mark runs A then B, compare B against A"),
    ("e", "results", "export the rows shown (records.parquet, summary.csv, summary.md)"),
    ("ctrl+s / ctrl+d", "setup", "save the selection for this suite / back to the suite's own"),
    ("F2 / F1 / ctrl+p", "anywhere", "plugins and their load errors / this help / command palette"),
    ("q / ctrl+q", "anywhere", "quit (mid-run: stop, or let the run finish headless)"),
]

MARKS = """\
[b]Table[/]  values in human units: latency p50 in ms per batch size, memory in MiB (training-step peak),
parameters and FLOPs as counts (12.3k = 12 300). [b green]Bold green[/]: the best value of its column within
the task and kind.
  [b yellow]★[/]  on the quality-vs-parameters Pareto front of its task and kind (only where the group has two
     or more rows): no other row is as small and at least as good.
  [yellow]≈[/]  [b]tie[/]: off the front only by quality differences inside the 95% confidence intervals
     over seeds; with more seeds it might be on the front.
  [b magenta]![/]  over budget: a cell of the row counts more parameters than its budget allows.
  [b]reached[/]  the budget fraction the method actually reached: methods move in whole steps (a rank,
     a block), so a 0.1 budget may be met at 0.094.
  [b]×ref[/]  interleaved latency against the reference method (timed A B A B in one process);
     [dim]~[/] marks a ratio inside the per-call noise (p90/p50) of the row and its reference.
  [b]±95%[/]  half-width of the 95% t interval of the quality mean ([b]-[/] with one seed).
[b]Compare[/]  regressions are the gate's (`lowdim-bench compare`, docs/gate.md); "not significant" is
beyond the tolerance but not significant over the seeds."""


class HelpScreen(ModalScreen[None]):
    """Keys and markers; plain Rich content (a Markdown widget took seconds to lay out mid-run)."""

    BINDINGS = [Binding("escape,q,f1,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        from rich.table import Table

        keys = Table(box=None, show_header=True, header_style="bold", padding=(0, 1), expand=False)
        for h in ("key", "where", "what"):
            keys.add_column(h)
        for row in KEYS:
            keys.add_row(f"[b]{row[0]}[/]", row[1], row[2])
        with VerticalScroll(classes="dialog wide"):
            yield Static("[b]lowdim-bench[/]  pick a suite, adjust methods, tasks, device, budgets and seeds, press "
                        "[b]F5[/]. Records are written as cells finish; nothing is lost when the app closes.")
            yield Static(keys, id="help-keys")
            yield Static(MARKS, id="help-marks")
