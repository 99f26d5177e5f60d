"""IdleCollector: full collections only while no input came for a moment (or after a long
deferral), and the app feeds it every key and mouse event."""
from __future__ import annotations

import asyncio
import gc

from lowdim_bench.tui import idle_gc
from lowdim_bench.tui.idle_gc import FULL_AFTER, IDLE_S, MAX_DEFER_S, MIN_GAP_S, IdleCollector

from helpers import TINY, write
from test_tui_app import make_app, ready


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_due_only_when_idle_and_enough_young_collections_passed_or_after_the_longest_deferral():
    clock = Clock()
    c = IdleCollector(clock)
    assert not c.due(FULL_AFTER)  # input "just now" (start)
    clock.t += IDLE_S
    assert not c.due(FULL_AFTER)  # idle, but the last full collection (start) is too recent
    clock.t += MIN_GAP_S
    assert c.due(FULL_AFTER) and not c.due(FULL_AFTER - 1)
    c.input()
    assert not c.due(FULL_AFTER)  # someone is typing
    for _ in range(int(MAX_DEFER_S / 0.5)):  # typing on, a key every half second
        clock.t += 0.5
        c.input()
    assert c.due(FULL_AFTER)  # deferred long enough: collect anyway


def test_start_turns_off_the_automatic_full_collection_and_tick_collects(monkeypatch):
    clock = Clock()
    c = IdleCollector(clock)
    collected = []
    monkeypatch.setattr(idle_gc.gc, "collect", lambda *a: collected.append(a) or 0)
    c.start()  # tests/conftest.py puts the collector back afterwards
    assert gc.isenabled() and gc.get_threshold() == (*idle_gc.YOUNG_THRESHOLDS, idle_gc.NEVER)
    monkeypatch.setattr(idle_gc.gc, "get_count", lambda: (0, 0, FULL_AFTER))
    assert not c.tick() and collected == []
    clock.t += max(IDLE_S, MIN_GAP_S)
    assert c.tick() and len(collected) == 1 and c.last_full == clock.t


def test_the_app_reports_keys_to_its_collector(tmp_path, fake_plugins):
    app = make_app(tmp_path, write(tmp_path, "tiny.toml", TINY))

    async def go():
        async with app.run_test(size=(120, 40)) as pilot:
            await ready(app, pilot)
            before = app.collector.last_input
            await pilot.pause(0.05)
            await pilot.press("2")
            assert app.collector.last_input > before

    asyncio.run(go())
