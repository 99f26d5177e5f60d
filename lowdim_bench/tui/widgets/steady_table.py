"""A DataTable that keeps its rendered cells when only its focus changed.

Why: every tab switch moves the focus into or out of the tab's table, and Textual then restyles
the table and calls `notify_style_update`, where DataTable drops every rendered cell, row and
line. Re-rendering the results table of a smoke report took 70 ms of each switch to the Results
tab on this 2-core machine (most of the switch). Those caches are already keyed by the table's
pseudo-class state (focus, hover), so the cells rendered for "focused" and for "blurred" can both
stay. They are dropped only when the table's look in that state changed (a theme, the CSS): its
own rules or those of its component classes differ from the last time it was in that state. For
the same reason a Resize to the size the table already had keeps them.
"""
from __future__ import annotations

from typing import Any

from textual import events
from textual.geometry import Size
from textual.widgets import DataTable

from .cache_drop import drop

RENDER_CACHES = ("_row_render_cache", "_cell_render_cache", "_row_renderable_cache", "_line_cache",
                 "_offset_cache", "_ordered_row_cache")


class SteadyTable(DataTable):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._looks: dict[Any, tuple] = {}  # pseudo-class state -> the look it was last rendered with
        self._seen_size: Size | None = None

    def _clear_caches(self) -> None:
        """DataTable's, with the caches' contents freed now rather than by a full collection
        (cache_drop.py): each new set of rows or filter empties them."""
        for name in RENDER_CACHES:
            if hasattr(self, name):
                drop(getattr(self, name))
        super()._clear_caches()

    def _on_resize(self, event: events.Resize) -> None:
        """A tab switch shows the table again with a Resize to the size it had, and DataTable's
        handler (which Textual runs after this one) starts every cache key afresh on any Resize:
        here only a new size gets that far."""
        if event.size == self._seen_size:
            event.prevent_default()
        self._seen_size = event.size

    def _look(self) -> tuple:
        """The rules the table renders with: its own and its component classes'."""
        parts = sorted((name, s.base.get_rules(), s.inline.get_rules()) for name, s in self._component_styles.items())
        return self.styles.base.get_rules(), self.styles.inline.get_rules(), parts

    def notify_style_update(self) -> None:
        state, look = self.get_pseudo_class_state(), self._look()
        if self._looks.get(state) != look:
            self._looks[state] = look
            super().notify_style_update()  # DataTable's: every cached cell, row and line goes
            return
        super(DataTable, self).notify_style_update()  # the widget's own style caches only
        self._styles_cache.clear()
        self._get_styles_to_render_cell.cache_clear()  # not keyed by the focus: the cursor's colours
        self.refresh()
