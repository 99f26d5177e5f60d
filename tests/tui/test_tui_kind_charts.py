"""The kind charts' data (merges, representation similarity) without pixels, and the app drawing
them from a run's records: per-member detail, the merge chart and the similarity grid."""
from __future__ import annotations

import asyncio

import pytest

from lowdim_bench.tui import kindcharts as kc
from lowdim_bench.tui import model


def _rec(task, kind, method, metric, value, phase=None, budget=0.3, seed=0, unit="ratio"):
    return {"run_id": "r", "cell_key": f"{method}{budget}{seed}", "task": task, "kind": kind, "method": method,
            "budget": budget, "knob": None, "seed": seed, "metric": metric, "phase": phase, "value": value,
            "unit": unit, "status": "ok", "higher_is_better": True}


def merge_records():
    out = []
    for method, kept, per in (("ties", 0.2, {"a": 0.8, "b": 0.6}), ("task-arithmetic", 1.0, {"a": 0.7, "b": 0.5})):
        for seed in (0, 1):
            out += [_rec("fam", "merge", method, "quality", 0.5 + seed * 0.1, seed=seed),
                    _rec("fam", "merge", method, "merge_retained", kept, seed=seed, unit="fraction")]
            out += [_rec("fam", "merge", method, "quality_normalised", v + seed * 0.1, phase=m, seed=seed)
                    for m, v in per.items()]
            out.append(_rec("fam", "merge", method, "quality_normalised", sum(per.values()) / 2 + seed * 0.1, seed=seed))
    return out


def similarity_records():
    base = {"run_id": "r", "cell_key": "analysis:representations", "task": "digits-mlp", "kind": None,
            "method": None, "seed": None, "unit": "fraction", "status": "ok"}
    vals = {("dense@full", "dense@full"): 0.9, ("dense@full", "lora@0.1"): 0.4, ("lora@0.1", "lora@0.1"): 0.8}
    return [{**base, "metric": f"{m}.{p}", "phase": f"{a} | {b}", "value": v - (0.1 if m == "svcca" else 0)}
            for m in ("svcca", "linear_cka") for p in ("fc1.in", "fc2.in") for (a, b), v in vals.items()]


def test_member_qualities_and_merge_view_average_seeds():
    data = model.table_data(merge_records())
    ties = next(r for r in data.rows if r.group[2] == "ties")
    assert kc.member_qualities(ties) == [("a", pytest.approx(0.85)), ("b", pytest.approx(0.65))]
    view = kc.merge_view(data.rows, ties)
    pts = {p.method: p for p in view.points}
    assert view.task == "fam" and pts["ties"].x == 0.2 and pts["ties"].y == pytest.approx(0.75) and pts["ties"].selected
    assert pts["task-arithmetic"].x == 1.0 and not pts["task-arithmetic"].selected
    assert kc.merge_view([r for r in data.rows if r.group[1] != "merge"], None) is None


def test_heat_view_is_symmetric_per_point_and_prefers_linear_cka():
    view = kc.heat_view(similarity_records(), "digits-mlp")
    assert view.measure == "linear_cka" and set(view.measures) == {"svcca", "linear_cka"}
    assert [g.point for g in view.grids] == ["fc1.in", "fc2.in"]
    g = view.grids[0]
    assert g.entries == ["dense@full", "lora@0.1"] and g.values == [[0.9, 0.4], [0.4, 0.8]]
    assert kc.heat_view(similarity_records(), "other-task").task == "digits-mlp"  # falls back to a task it has
    assert kc.heat_view(similarity_records(), None, "svcca").grids[0].values[0][1] == pytest.approx(0.3)
    assert kc.heat_view(merge_records(), None) is None
    assert kc.ramp(None) is None and kc.ramp(0.0) != kc.ramp(1.0) and kc.ramp(2.0) == kc.ramp(1.0)


def test_app_draws_the_merge_chart_the_grid_and_the_member_detail(tmp_path, monkeypatch):
    from textual.widgets import Static

    from lowdim_bench.tui.app import LowdimApp
    from lowdim_bench.tui.screens.views import DetailScreen
    from lowdim_bench.tui.widgets.chart_pane import ChartPane
    from lowdim_bench.tui.widgets.results import ResultsTable

    monkeypatch.setenv("LOWDIM_BENCH_STATE", str(tmp_path / "state"))

    async def go():
        app = LowdimApp(reports_dir=tmp_path / "reports")
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.pause()
            data = model.table_data(merge_records() + similarity_records())
            app.query_one(ResultsTable).set_data(data)
            app.action_tab(2)
            for _ in range(40):
                await pilot.pause(0.05)
                if app.query(ChartPane) and app.query_one(ChartPane).query_one("#chart-merge").data:
                    break
            pane = app.query_one(ChartPane)
            assert pane.query_one("#chart-merge").data.points
            assert pane.query_one("#chart-similarity").data.grids
            assert not pane.query_one("#chart-trace-rounds").data  # no solve cells: `c` passes it by
            seen = {pane.cycle() for _ in range(len(model.CHARTS))}
            assert "error vs rounds" not in seen and "representation similarity" in seen
            pane.show_chart(model.CHARTS.index("representation similarity"))
            await pilot.pause()
            text = str(pane.current.render())
            assert "cannot draw" not in text
            row = next(r for r in data.rows if r.group[2] == "ties")
            app.push_screen(DetailScreen(row, data.records[row.group]))
            await pilot.pause()
            info = str(app.screen.query_one("#detail-text", Static).render())
            assert "per member" in info and "a: 0.850" in info and "b: 0.650" in info

    asyncio.run(go())
