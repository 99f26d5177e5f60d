"""A footer that recomposes only when the keys it shows change.

Textual's Footer recomposes (unmounts and mounts a widget per key, each styled anew) on every
focus change; switching tabs moves the focus, so each switch paid for a new footer. On a busy
2-core machine mid-run that was most of a tab switch. The keys it shows are the app's own;
the tabs' keys are listed in their panes (and in F1), so the footer stays put.
"""
from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class QuietFooter(Footer):
    _shown: tuple | None = None

    def bindings_changed(self, screen: Screen) -> None:
        shown = tuple((b.key, b.action, b.description, enabled, tooltip)
                      for _, b, enabled, tooltip in screen.active_bindings.values() if b.show)
        if shown == self._shown and self._bindings_ready:
            return
        self._shown = shown
        super().bindings_changed(screen)
