"""The chart pane: every chart, one shown at a time, and a legend line under it.

Each chart gets every update and only the visible one paints. `c` steps through the charts that
have something to draw for the shown rows (a suite without merges never stops on the merge
chart); the number keys and the palette reach every chart.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ContentSwitcher, Static

from .. import chartdata as cd
from .. import model
from .charts import Chart, LatencyChart, MemoryChart, QualityChart
from .kind_charts import HeatmapChart, MergeChart, TraceChart


class ChartPane(Vertical):
    """The charts and a legend line."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.rows: list[model.Row] = []
        self.selected: model.Row | None = None
        self._drawn: tuple | None = None
        self._legend, self._legend_spans = "", []

    def compose(self) -> ComposeResult:
        with ContentSwitcher(initial="chart-params", id="chart-switcher"):
            yield QualityChart("params", id="chart-params")
            yield QualityChart("latency", id="chart-latency")
            yield MemoryChart(id="chart-memory")
            yield LatencyChart(id="chart-batch")
            yield MergeChart(id="chart-merge")
            yield HeatmapChart(id="chart-similarity")
            yield TraceChart("step", id="chart-trace-rounds")
            yield TraceChart("seconds", id="chart-trace-seconds")
        yield Static("", id="chart-legend")

    @property
    def charts(self) -> list[Chart]:
        return list(self.query(Chart))

    @property
    def switcher(self) -> ContentSwitcher:
        return self.query_one(ContentSwitcher)

    @property
    def current(self) -> Chart:
        return self.switcher.get_child_by_id(self.switcher.current)

    def show_rows(self, rows: list[model.Row], selected: model.Row | None,
                  colors: dict[str, tuple[int, int, int]] | None = None,
                  records: dict[tuple, list[dict]] | None = None) -> None:
        """Redraw for new rows or another selected row; the same rows again (a keystroke in the
        filter that matches the same rows) cost nothing. `records`: every record by row group
        (the trace and similarity charts draw records the rows do not hold)."""
        colors = colors if colors is not None else cd.method_colors(rows)
        key = (tuple(map(id, rows)), id(selected), tuple(sorted(colors.items())), id(records))
        if key == self._drawn:
            return
        self._drawn = key
        self.rows, self.selected = rows, selected
        for chart in self.charts:
            chart.show_rows(rows, selected, colors, records)
        self.update_legend()

    def update_legend(self) -> None:
        """Only when it changed: updating a Static lays the screen out again."""
        legend = self.current.legend
        if legend.plain != self._legend or legend.spans != self._legend_spans:
            self._legend, self._legend_spans = legend.plain, list(legend.spans)
            self.query_one("#chart-legend", Static).update(legend)

    def cycle(self) -> str:
        """The next chart with something to draw (all of them when none has)."""
        ids = [c.id for c in self.charts if c.data] or [c.id for c in self.charts]
        order = [c.id for c in self.charts]
        cur = self.switcher.current
        after = order[order.index(cur) + 1:] + order[:order.index(cur) + 1] if cur in order else order
        self.switcher.current = next((i for i in after if i in ids), ids[0])
        self.update_legend()
        return self.current.title

    def show_chart(self, index: int) -> str:
        self.switcher.current = self.charts[index].id
        self.update_legend()
        return self.charts[index].title
