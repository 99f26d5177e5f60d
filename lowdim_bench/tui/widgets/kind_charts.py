"""Charts for one kind of row: merges (quality kept against task-vector mass kept), the
representations analysis (a similarity grid per hook point) and solve cells (error by round).

They share the pane, the legend line and the never-raise rendering of `charts.Chart`; what they
draw comes from `kindcharts` and `traces` (plain data, tested without pixels).
"""
from __future__ import annotations

import math

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .. import chartdata as cd
from .. import kindcharts as kc
from .. import traces
from .charts import DOT, LINE, SELECTED, Chart, axis, label


class MergeChart(Chart):
    title = "merges: quality kept vs mass kept"

    def draw(self, plt, rows, selected) -> None:
        view = kc.merge_view(rows, selected)
        self.data = view
        if view is None or not view.points:
            plt.title(f"{self.title}: no merge rows with retained mass and normalised quality yet")
            return
        plt.title(f"{view.task} · merge: {view.y_title}")
        xs, ys = [p.x for p in view.points], [p.y for p in view.points]
        axis(plt, "x", cd.nice_ticks(0.0, max(1.0, max(xs))), 0.0, max(1.0, max(xs)), 0.04)
        axis(plt, "y", cd.nice_ticks(min(ys + [1.0]), max(ys + [1.0]), n=4), min(ys + [1.0]), max(ys + [1.0]), 0.05)
        plt.plot([0.0, max(1.0, max(xs))], [1.0, 1.0], marker=LINE, color=cd.FRONT_COLOR)  # every member kept whole
        for p in view.points:
            color = self.method_colors.get(p.method, cd.PALETTE[0])
            marker = SELECTED if p.selected else DOT
            plt.scatter([p.x], [p.y], marker=marker, color=color)
            label(plt, p.size, p.x, p.y, 0.0, max(1.0, max(xs)), color, marker, p.selected)
        plt.xlabel("fraction of task-vector entries kept (merge_retained)")
        for m in dict.fromkeys(p.method for p in view.points):
            self.key(m, self.method_colors.get(m, cd.PALETTE[0]))
        self.legend.append("── ", style=cd.rgb(cd.FRONT_COLOR))
        self.legend.append("1.0: as good as each member alone   ")


class RichChart(Chart):
    """A chart drawn as Rich text rather than a plotext canvas (a grid of numbers reads better)."""

    def render(self):
        if self.size.width < 20 or self.size.height < 6:
            return Text(f"{self.title}: too small to draw ({self.size.width}×{self.size.height})", style="dim")
        try:
            return self.layout(self.size.width, self.size.height)
        except Exception as e:  # a drawing bug must not close the app
            return Text(f"{self.title}: cannot draw ({type(e).__name__})", style="dim")

    def layout(self, width: int, height: int):  # pragma: no cover
        raise NotImplementedError


class HeatmapChart(RichChart):
    title = "representation similarity"

    def draw(self, plt, rows, selected) -> None:
        task = selected.group[0] if selected is not None else (rows[0].group[0] if rows else None)
        self.data = kc.heat_view([r for group in self.records.values() for r in group], task)
        if self.data is not None:
            self.legend.append(f"{self.data.measure}: ")
            for v in (0.0, 0.5, 1.0):
                self.key(f"{v:g}", kc.ramp(v), "█")
            self.legend.append("diagonal: seed to seed   other measures: "
                               f"{', '.join(m for m in self.data.measures if m != self.data.measure)} "
                               "in representations.csv", style="dim")

    def layout(self, width: int, height: int):
        view = self.data
        if view is None or not view.grids:
            return Text(f"{self.title}: no representations analysis in this run "
                        "(suite `analyses = [\"representations\"]`, `save = [\"model\"]`)", style="dim")
        out, used = [Text(f"{view.task}: {view.measure} between method entries, per hook point", style="bold")], 1
        for i, grid in enumerate(view.grids):
            need = len(grid.entries) + 3
            if used + need > height:
                out.append(Text(f"… {len(view.grids) - i} more points in representations.csv", style="dim"))
                break
            out.append(self.grid_table(grid))
            used += need
        return Group(*out)

    @staticmethod
    def grid_table(grid: kc.Grid) -> Table:
        table = Table(title=grid.point, title_justify="left", box=None, pad_edge=False, padding=(0, 1))
        table.add_column("")
        for j in range(len(grid.entries)):
            table.add_column(str(j + 1), justify="right")
        for i, (entry, vals) in enumerate(zip(grid.entries, grid.values)):
            cells = []
            for v in vals:
                c = kc.ramp(v)
                text = "" if v is None else f"{v:.2f}"
                cells.append(Text(text, style=f"black on {cd.rgb(c)}" if c and v > 0.5 else
                                  (f"white on {cd.rgb(c)}" if c else "")))
            table.add_row(f"{i + 1} {entry}", *cells)
        return table


class TraceChart(Chart):
    """A solve task's traced error against rounds or the solver's own seconds: one line per
    (method, size, seed), coloured per method (lowdim_bench/tui/traces.py makes the curves)."""

    def __init__(self, against: str, **kw) -> None:
        super().__init__(**kw)
        self.against = against
        self.title = "error vs rounds" if against == "step" else "error vs seconds"

    def draw(self, plt, rows, selected) -> None:
        view = traces.trace_view(rows, selected, self.records, self.against)
        self.data = view
        if view is None or not view.curves:
            plt.title(f"{self.title}: no traced solve rows yet")
            return
        ty = (lambda v: math.log10(v)) if view.log_y else (lambda v: v)
        xs = [x for c in view.curves for x in c.x]
        ys = [y for c in view.curves for y in c.y]
        plt.title(f"{view.task} · solve: {view.value} vs {'rounds' if view.against == 'step' else 'seconds'}"
                  + (" (log y)" if view.log_y else ""))
        axis(plt, "x", cd.nice_ticks(min(xs), max(xs)), min(xs), max(xs), 0.03)
        lo, hi = min(ys), max(ys)
        axis(plt, "y", cd.log_ticks(lo, hi) if view.log_y else cd.nice_ticks(lo, hi, n=4), ty(lo), ty(hi), 0.04)
        for c in view.curves:
            color = self.method_colors.get(c.method, cd.PALETTE[0])
            plt.plot(c.x, [ty(y) for y in c.y], marker=LINE, color=color)
            plt.scatter(c.x[-1:], [ty(c.y[-1])], marker=DOT, color=color)
        plt.xlabel("round (the solver's iteration)" if view.against == "step" else "solver seconds (scoring left out)")
        for m in dict.fromkeys(c.method for c in view.curves):
            self.key(m, self.method_colors.get(m, cd.PALETTE[0]))
        if view.others:
            self.legend.append(f"[k: next of {view.others + 1} solve tasks]", style="dim")
