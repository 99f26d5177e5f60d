"""Run progress: a bar with cells done/total, failures, ETA, the cells in flight, and the log.

Every event gets one log line; a failure's full reason and traceback is kept and shown by `t`
(the last failure) from anywhere in the app.
"""
from __future__ import annotations

import time

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.strip import Strip
from textual.widgets import ProgressBar, RichLog, Static

from ..session import LogLine, RunState
from .cache_drop import drop

STYLES = {"ok": "green", "failed": "bold red", "run": "bold cyan", "info": ""}


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class RunLog(RichLog):
    """A RichLog that works out its line style once per style change instead of once per line:
    `rich_style` walks the ancestors' colours, and every tab switch re-renders each visible line
    (the switch restyles the tab, which empties the line cache)."""

    _line_style: Style | None = None

    def notify_style_update(self) -> None:
        drop(self._line_cache)  # freed now, not by a full collection (cache_drop.py)
        super().notify_style_update()
        self._line_style = None

    def render_line(self, y: int) -> Strip:
        if self._line_style is None:
            self._line_style = self.rich_style
        scroll_x, scroll_y = self.scroll_offset
        line = self._render_line(scroll_y + y, scroll_x, self.scrollable_content_region.width)
        return line.apply_style(self._line_style)


class RunPanel(Vertical):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.state = RunState()
        self.jobs = 1
        self.failures: list[LogLine] = []
        self.lines: list[str] = []  # plain log text, for tests and the tmux driver
        self._current = self._status = ""

    def compose(self) -> ComposeResult:
        yield Static("idle: pick a suite on the Setup tab and press F5", id="run-state")
        yield ProgressBar(total=1, show_eta=False, id="run-progress")
        yield Static("", id="run-current", markup=False)
        yield RunLog(id="log", wrap=True, markup=False, max_lines=5000)

    def update_state(self, state: RunState) -> None:
        """Up to ten times a second mid-run: repaint only what changed (an update of a Static
        lays the screen out again, which a busy 2-core machine feels on every key)."""
        self.state = state
        bar = self.query_one("#run-progress", ProgressBar)
        if (bar.total, bar.progress) != (max(state.total, 1), state.done):
            bar.update(total=max(state.total, 1), progress=state.done)
        current = "\n".join(f"▶ {v}" for v in state.current.values())
        if current != self._current:
            # One line per cell in flight (no wrapping, app.tcss): the screen is laid out again only
            # when that count changes. A layout per update cost 40-80 ms of the UI thread on a busy
            # 2-core machine, and a tab switch waited behind it.
            relayout = len(current.splitlines()) != len(self._current.splitlines())
            self._current = current
            self.query_one("#run-current", Static).update(current, layout=relayout)
        self.refresh_status()

    def status_text(self, now: float | None = None) -> str:
        s = self.state
        if s.state == "idle":
            return "idle: pick a suite on the Setup tab and press F5"
        eta = s.eta_s(now)
        elapsed = (time.monotonic() if now is None else now) - s.started_at if s.started_at else None
        failed = f", [red]{s.failed} failed[/]" if s.failed else ", 0 failed"
        text = f"[b]{s.state}[/]  {s.done}/{s.total} cells{failed}"
        if s.state == "running":
            text += f"  elapsed {fmt_duration(elapsed)}  ETA {fmt_duration(eta)}"
        if s.message:
            text += f"  [red]{s.message}[/]"
        return text + (f"  [dim]{s.run_id}[/]" if s.run_id else "")

    def refresh_status(self) -> None:
        text = self.status_text()
        if text != self._status:
            self._status = text
            self.query_one("#run-state", Static).update(text, layout=False)  # one line, fixed height (app.tcss)

    def add_lines(self, lines: list[LogLine]) -> None:
        log = self.query_one("#log", RichLog)
        for line in lines:
            self.lines.append(line.text)
            log.write(Text(line.text + ("   (t: traceback)" if line.traceback else ""), style=STYLES[line.kind]))
            if line.kind == "failed":
                self.failures.append(line)

    def reset(self) -> None:
        self.failures.clear()
        self.lines.clear()
        self.query_one("#log", RichLog).clear()
