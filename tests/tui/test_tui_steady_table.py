"""SteadyTable (the results and reports tables): a focus change keeps the rendered cells, each
focus state still renders exactly as a plain DataTable does, and a theme change renders anew."""
from __future__ import annotations

import asyncio
import gc

from textual.app import App
from textual.widgets import DataTable, Input

from lowdim_bench.tui.widgets.steady_table import SteadyTable


class Pair(App):
    def compose(self):
        yield Input(id="box")
        yield SteadyTable(id="steady", cursor_type="row")
        yield DataTable(id="plain", cursor_type="row")

    def on_mount(self) -> None:
        for t in self.query(DataTable):
            t.add_columns("method", "quality", "params")
            for i in range(12):
                t.add_row(f"m{i}", f"0.{i:03d}", f"{i}k")


def lines(table) -> list[list[tuple[str, str]]]:
    return [[(seg.text, str(seg.style)) for seg in strip] for strip in table.render_lines(table.region.reset_offset)]


def test_a_focus_change_keeps_the_cells_and_each_state_renders_like_a_plain_table(monkeypatch):
    calls = []
    real = DataTable._render_cell
    monkeypatch.setattr(DataTable, "_render_cell", lambda self, *a, **k: (calls.append(self.id), real(self, *a, **k))[1])
    app = Pair()

    async def go():
        async with app.run_test(size=(80, 40)) as pilot:
            steady, plain = app.query_one("#steady"), app.query_one("#plain")
            seen = {}
            for round_ in range(3):
                for focus in (True, False):
                    (steady if focus else app.query_one("#box")).focus()
                    await pilot.pause(0.05)
                    calls.clear()
                    got = lines(steady)
                    rendered = calls.count("steady")
                    if focus:  # the plain table in the same state, for reference
                        plain.focus()
                        await pilot.pause(0.05)
                    plain_lines = lines(plain)
                    # the same cells and colours as a DataTable in that state (the cursor row included)
                    assert got == plain_lines
                    seen.setdefault(focus, got)
                    assert got == seen[focus]
                    if round_ > 0:
                        assert rendered == 0, f"round {round_}, focus {focus}: {rendered} cells rendered again"
            calls.clear()
            app.theme = "textual-light" if app.theme != "textual-light" else "nord"
            await pilot.pause(0.1)
            again = lines(steady)
            assert calls.count("steady") > 0 and again != seen[False]  # a new look: rendered anew

    asyncio.run(go())


def test_emptying_the_table_frees_its_rendered_cells_without_the_cyclic_collector():
    """Textual's LRU caches keep a ring of links; SteadyTable cuts it when it empties them, so a
    new set of rows leaves its old rendered cells to reference counting, not to a full collection
    (85-315 ms mid-run). A plain DataTable is the reference: its clear leaves a ring behind. (What
    stays cyclic is Textual's Strip, which caches itself: ~200 objects here against ~940.)"""
    app = Pair()
    left = {}

    async def go():
        async with app.run_test(size=(80, 40)) as pilot:
            await pilot.pause(0.05)
            for name in ("steady", "plain"):
                table = app.query_one(f"#{name}")
                lines(table)  # rendered: the caches hold every visible cell
                assert len(table._cell_render_cache) > 0
                gc.collect()
                gc.disable()
                try:
                    table.clear()
                    left[name] = gc.collect()
                finally:
                    gc.enable()

    asyncio.run(go())
    assert left["plain"] > 100 and left["steady"] < left["plain"] / 3, left
