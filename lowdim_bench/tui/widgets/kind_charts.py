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

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.body: object = Text("")

    def render(self):
        if self.size.width < 20 or self.size.height < 6:
            return Text(f"{self.title}: too small to draw ({self.size.width}×{self.size.height})", style="dim")
        try:
            return self.layout(self.size.width, self.size.height)
        except Exception as e:  # a drawing bug must not close the app
            return Text(f"{self.title}: cannot draw ({type(e).__name__})", style="dim")

    def layout(self, width: int, height: int):  # pragma: no cover
        return self.body


class HeatmapChart(RichChart):
    title = "representation similarity"

    def draw(self, plt, rows, selected) -> None:
        task = selected.group[0] if selected is not None else (rows[0].group[0] if rows else None)
        self.data = kc.heat_view(self.records, task)
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
    """Solve cells: a traced error against the solver's rounds (one line per method, size, seed)."""

    title = "solver error by round"

    def draw(self, plt, rows, selected) -> None:
        from .. import traces

        task = selected.group[0] if selected is not None else None
        recs = [r for r in self.records if task is None or r.get("task") == task]
        names = traces.traced_values(recs)
        value = "rel_error" if "rel_error" in names else (names[0] if names else None)
        curves = [c for c in traces.curves(recs, value) if c.y] if value else []
        self.data = curves
        if not curves:
            plt.title(f"{self.title}: no solve cells with traces yet")
            return
        ys = [y for c in curves for y in c.y if y > 0]
        log = bool(ys) and max(ys) / min(ys) > 100
        ty = (lambda v: math.log10(v)) if log else (lambda v: v)
        plt.title(f"{task or 'all tasks'} · solve: {value} by round" + (" (log10 y)" if log else ""))
        colors = {}
        for c in curves:
            method = c.label.split(" ")[0]
            color = colors.setdefault(method, self.method_colors.get(method, cd.PALETTE[len(colors) % len(cd.PALETTE)]))
            pts = [(x, ty(y)) for x, y in zip(c.x, c.y) if y > 0 or not log]
            if pts:
                plt.plot([p[0] for p in pts], [p[1] for p in pts], marker=LINE, color=color)
        plt.xlabel("round (step)")
        for m, color in colors.items():
            self.key(m, color)
