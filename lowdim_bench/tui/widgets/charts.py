"""Live charts (textual-plotext) of the rows the results table shows.

One chart at a time fills the pane; `c` steps through them. Each chart keeps the data it was
last given (`.data`), so tests can check what it plots without reading pixels. The selected
table row is drawn as a large marker.
"""
from __future__ import annotations

from textual.widgets import ContentSwitcher
from textual_plotext import PlotextPlot

from .. import model


class Chart(PlotextPlot):
    title = ""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.data: object = None

    def show_rows(self, rows: list[model.Row], selected: model.Row | None) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        self.draw(plt, rows, selected)
        self.refresh()

    def draw(self, plt, rows: list[model.Row], selected: model.Row | None) -> None:  # pragma: no cover
        raise NotImplementedError


class QualityChart(Chart):
    """Quality against a cost on x, one colour per method, the Pareto front as a line."""

    def __init__(self, x_name: str, x_of, log_x: bool, **kw) -> None:
        super().__init__(**kw)
        self.x_name, self.x_of, self.log_x = x_name, x_of, log_x
        self.title = f"quality vs {x_name}"

    def draw(self, plt, rows, selected) -> None:
        series, fronts = model.quality_vs(rows, self.x_of)
        self.data = {"series": series, "fronts": fronts}
        if not series:
            plt.title(f"{self.title}: no rows with both values yet")
            return
        if self.log_x:
            plt.xscale("log")
        for s in series:
            plt.scatter(s.x, s.y, label=s.label, marker="dot")
        for front in fronts:
            if len(front.x) > 1:
                plt.plot(front.x, front.y, label=front.label)
        if selected is not None:
            x, q = self.x_of(selected), selected.values.get("quality")
            if x and q is not None:
                plt.scatter([float(x)], [float(q)], marker="O", color="red", label="selected")
        plt.xlabel(self.x_name)
        plt.ylabel("quality")


class MemoryChart(Chart):
    title = "training-step memory (MiB): parameters / gradients / optimizer / activations"

    def draw(self, plt, rows, selected) -> None:
        labels, parts = model.memory_breakdown(rows)
        self.data = {"labels": labels, "parts": dict(zip(model.MEMORY_PARTS, parts))}
        if not labels:
            plt.title(f"{self.title}: no memory records yet")
            return
        plt.stacked_bar(labels, parts, labels=model.MEMORY_PARTS, orientation="horizontal")


class LatencyChart(Chart):
    title = "inference latency p50 (ms) by batch size"

    def draw(self, plt, rows, selected) -> None:
        series = model.latency_by_batch(rows)
        self.data = {"series": series}
        if not series:
            plt.title(f"{self.title}: no latency records yet")
            return
        plt.xscale("log")
        sel = model.row_label(selected) if selected is not None else None
        for s in series:
            plt.plot(s.x, s.y, label=s.label, marker="hd" if s.label == sel else "dot")
        plt.xlabel("batch size")
        plt.ylabel("ms")


class ChartPane(ContentSwitcher):
    """The four charts; each gets every update, only the visible one paints."""

    def __init__(self, **kw) -> None:
        super().__init__(initial="chart-params", **kw)
        self.rows: list[model.Row] = []
        self.selected: model.Row | None = None

    def compose(self):
        yield QualityChart("parameters", model.params_of, True, id="chart-params")
        yield QualityChart("latency p50 ms (smallest batch)", model.smallest_batch_latency, False, id="chart-latency")
        yield MemoryChart(id="chart-memory")
        yield LatencyChart(id="chart-batch")

    @property
    def charts(self) -> list[Chart]:
        return list(self.query(Chart))

    def show_rows(self, rows: list[model.Row], selected: model.Row | None) -> None:
        self.rows, self.selected = rows, selected
        for chart in self.charts:
            chart.show_rows(rows, selected)

    def cycle(self) -> str:
        ids = [c.id for c in self.charts]
        self.current = ids[(ids.index(self.current) + 1) % len(ids)] if self.current in ids else ids[0]
        return self.get_child_by_id(self.current).title

    def show_chart(self, index: int) -> str:
        self.current = self.charts[index].id
        return self.charts[index].title
