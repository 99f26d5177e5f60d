"""Small modal screens: a scrollable text (tracebacks), the close-mid-run question, help."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Markdown, Static


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


HELP = """\
# lowdim-bench

Pick a suite, adjust methods, tasks, device, budgets and seeds, press **F5**. Results appear as
cells finish; nothing is lost when the app closes (records are written as they arrive).

| key | where | what |
|---|---|---|
| F5 / ctrl+r | anywhere | start the run set up on the Setup tab |
| F6 | anywhere | cancel the run (the cells in flight stop; finished records stay) |
| 1 2 3 4 | not typing | Setup, Run, Results, Reports tab |
| t | anywhere | traceback of the last failure |
| s / S | results | sort by the next column (again: descending) |
| click header | results | sort by that column |
| enter | results | detail of the row: every record, configuration, environment |
| / | results | filter rows (words match task, kind, method, budget) |
| c | results | next chart (quality vs params, vs latency, memory, latency by batch) |
| v | results | show or hide the charts |
| enter / o | reports | open the run in the results table and charts |
| space | reports | mark a run for comparison (two marks: d compares) |
| d | reports | compare the two marked runs |
| e | results / reports | export the rows shown (records.parquet, summary.csv, summary.md) |
| ctrl+s | setup | save the selection for this suite (restored next time) |
| ctrl+d | setup | back to the suite's own selection |
| F2 | anywhere | plugins and their load errors |
| F1 / ? | anywhere | this help |
| ctrl+p | anywhere | command palette: run suite X, open report Y, compare, charts |
| q / ctrl+q | anywhere | quit (mid-run: stop, or let the run finish headless) |

In the table, **bold green** is the best value of its column within the task and kind,
★ marks rows on the quality-vs-parameters Pareto front, red status means failed seeds.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,f1,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide"):
            yield Markdown(HELP)
