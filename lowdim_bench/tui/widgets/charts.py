"""Live charts (textual-plotext) of the rows the results table shows.

One chart at a time fills the pane; `c` steps through them, and the Pareto charts, memory and
latency-by-batch follow the selected row's task and kind (`k` in the table jumps to the next
one). What each chart draws comes from `chartdata` (tested without pixels); each chart keeps it
in `.data`.

Why no plotext legend: plotext's legend builder raises IndexError when a labelled series has no
point left inside a small canvas (a resize, a redraw at another size), and it repeats colours.
The legend is a Rich line under the chart instead, in the same colours, and a chart whose build
fails for any other reason shows a one-line message rather than taking the app down.
"""
from __future__ import annotations

import math

from rich.text import Text
from textual_plotext import PlotextPlot

from .. import chartdata as cd
from .. import model

DOT, SELECTED = "●", "◆"
LINE, RANGE = "·", "│"  # cell-aligned: plotext draws braille lines half a row off the markers


class Chart(PlotextPlot):
    title = ""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.data: object = None
        self.legend: Text = Text()
        self.method_colors: dict[str, tuple[int, int, int]] = {}
        self.records: dict[tuple, list[dict]] = {}  # every record by row group (analyses: kind None)
        self._version = 0
        self._cache: tuple[tuple, Text] | None = None

    def show_rows(self, rows: list[model.Row], selected: model.Row | None,
                  colors: dict[str, tuple[int, int, int]], records: dict[tuple, list[dict]] | None = None) -> None:
        self.method_colors = colors
        self.records = records or {}
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.theme(self._get_plotext_theme_name(self.app.theme))  # text backgrounds take the canvas colour
        self.legend = Text()
        try:
            self.draw(plt, rows, selected)
        except Exception as e:  # odd records must not close the app: the chart says it could not draw
            self.data = None
            plt.clear_data()
            plt.title(f"{self.title}: cannot draw these rows ({type(e).__name__}: {e})"[:200])
        self._version += 1
        self.refresh()

    def render(self):
        """Build once per data and size (a tab switch repaints without rebuilding); never raise."""
        key = (self._version, self.size.width, self.size.height, self.app.theme)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if self.size.width < 20 or self.size.height < 6:
            out = Text(f"{self.title}: too small to draw ({self.size.width}×{self.size.height})", style="dim")
        else:
            try:
                out = super().render()
            except Exception as e:  # a plotting library bug must not close the app
                out = Text(f"{self.title}: cannot draw at {self.size.width}×{self.size.height} ({type(e).__name__})",
                           style="dim")
        self._cache = (key, out)
        return out

    def draw(self, plt, rows: list[model.Row], selected: model.Row | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def key(self, name: str, color: tuple[int, int, int], marker: str = DOT) -> None:
        self.legend.append(f"{marker} ", style=cd.rgb(color))
        self.legend.append(f"{name}   ")


def axis(plt, which: str, ticks: tuple[list[float], list[str]], lo: float, hi: float, pad: float = 0.0) -> None:
    """Ticks at the given positions; the axis spans the data (lo..hi) and the ticks, widened by
    `pad` of the span each side (points at the ends are not drawn on the frame)."""
    pos, labels = ticks
    if pos:
        (plt.xticks if which == "x" else plt.yticks)(pos, labels)
    (plt.xlim if which == "x" else plt.ylim)(*cd.axis_range(pos, lo, hi, pad))


def label(plt, text: str, x: float, y: float, lo: float, hi: float, color, marker: str, bold: bool) -> None:
    """The marker and its text at (x, y): text to the right, or to the left in the last quarter."""
    right = hi > lo and (x - lo) / (hi - lo) > 0.75
    plt.text(f"{text} {marker}" if right else f"{marker} {text}", x, y, color=color,
             alignment="right" if right else "left", style="bold" if bold else None)


class QualityChart(Chart):
    """Quality against a cost for one task and kind: points coloured per method and labelled with
    their budget, the front as a thin line, tied rows with their 95% interval as a range."""

    def __init__(self, cost: str, **kw) -> None:
        super().__init__(**kw)
        self.cost = cost
        self.title = "quality vs parameters" if cost == "params" else "quality vs latency"

    def draw(self, plt, rows, selected) -> None:
        view = cd.quality_view(rows, selected, self.cost)
        self.data = view
        if view is None or not view.points:
            plt.title(f"{self.title}: no rows with both values yet")
            return
        tx = (lambda v: math.log10(v)) if view.log_x else (lambda v: v)
        plt.title(f"{view.title}; y: {view.y_title}")
        xs = [tx(p.x) for p in view.points]
        ys = [p.y for p in view.points] + [p.y + s * p.ci for p in view.ranges() for s in (-1, 1)]
        xmin, xmax = min(p.x for p in view.points), max(p.x for p in view.points)
        axis(plt, "x", cd.log_ticks(xmin, xmax) if view.log_x else cd.nice_ticks(xmin, xmax), min(xs), max(xs), 0.04)
        axis(plt, "y", cd.nice_ticks(min(ys), max(ys), n=4), min(ys), max(ys), 0.05)
        if len(view.front) > 1:
            plt.plot([tx(x) for x, _ in view.front], [y for _, y in view.front], marker=LINE, color=cd.FRONT_COLOR)
        for p in view.ranges():
            plt.plot([tx(p.x)] * 2, [p.y - p.ci, p.y + p.ci], marker=RANGE, color=self.method_colors.get(p.method))
        for p in view.points:
            color = self.method_colors.get(p.method, cd.PALETTE[0])
            marker = SELECTED if p.selected else DOT
            plt.scatter([tx(p.x)], [p.y], marker=marker, color=color)
            label(plt, p.size if len(view.methods) > 1 else p.label, tx(p.x), p.y, min(xs), max(xs), color, marker,
                  p.selected)
        plt.xlabel(view.x_title)
        for m in view.methods:
            self.key(m, self.method_colors.get(m, cd.PALETTE[0]))
        if len(view.front) > 1:
            self.legend.append("── ", style=cd.rgb(cd.FRONT_COLOR))
            self.legend.append("Pareto front   ")
        if view.ranges():
            self.legend.append("│ ", style="bold")
            self.legend.append("95% interval of tied rows   ")
        if view.others:
            self.legend.append(f"[k: next of {len(view.others) + 1} task/kind groups]", style="dim")


class MemoryChart(Chart):
    title = "training-step memory"

    def draw(self, plt, rows, selected) -> None:
        view = cd.memory_view(rows, selected)
        self.data = view
        if view is None or not view.labels:
            plt.title(f"{self.title}: no memory records yet")
            return
        plt.title(f"{view.task}: training-step memory (MiB) by part")
        plt.stacked_bar(view.labels, [view.parts[p] for p in cd.MEMORY_PARTS], orientation="horizontal",
                        color=cd.MEMORY_COLORS, width=0.6)
        axis(plt, "x", cd.nice_ticks(0.0, max(view.totals) * 1.02), 0.0, max(view.totals))
        plt.xlabel("MiB (parameters + gradients + optimizer state + activations)")
        for part, color in zip(cd.MEMORY_PARTS, cd.MEMORY_COLORS):
            self.key(part, color, "█")


class LatencyChart(Chart):
    title = "latency by batch size"

    def draw(self, plt, rows, selected) -> None:
        view = cd.batch_view(rows, selected)
        self.data = view
        if view is None or not view.lines:
            plt.title(f"{self.title}: no latency records yet")
            return
        plt.title(f"{view.task} · {view.kind}: inference latency p50 (ms) by batch size")
        lo, hi = math.log2(min(view.sizes)), math.log2(max(view.sizes))
        top = max(v for line in view.lines for v in line.ms)
        axis(plt, "x", cd.log2_ticks(view.sizes), lo, hi, 0.04)
        axis(plt, "y", cd.nice_ticks(0.0, top, n=4), 0.0, top, 0.03)
        for line in view.lines:
            color = self.method_colors.get(line.method, cd.PALETTE[0])
            xs = [math.log2(b) for b in line.batch]
            if len(xs) > 1:
                plt.plot(xs, line.ms, marker=LINE, color=color)
            marker = SELECTED if line.selected else DOT
            plt.scatter(xs, line.ms, marker=marker, color=color)
            label(plt, line.label, xs[-1], line.ms[-1], lo, hi, color, marker, line.selected)
        plt.xlabel("batch size (log 2 axis); y: p50 latency in ms")
        for m in dict.fromkeys(line.method for line in view.lines):
            self.key(m, self.method_colors.get(m, cd.PALETTE[0]))
