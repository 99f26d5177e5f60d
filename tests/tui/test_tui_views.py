"""What the charts, the table and the reports list compute, without Textual: ticks at round values,
one Pareto chart per task and kind, ties as ranges, human units, interleaved ratios, cell counts."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from helpers import GRID, fixed_run, grid_records, grid_run
from lowdim_bench.tui import chartdata as cd
from lowdim_bench.tui import fmt, model, runs, table


@pytest.fixture(scope="module")
def grid():
    return model.table_data(grid_records("r-grid"))


def row(data, method, kind, size):
    return next(r for r in data.rows if r.group == ("tiny", kind, method, size))


def test_log_ticks_sit_at_round_values():
    pos, labels = cd.log_ticks(50, 1000)
    assert labels == ["50", "100", "200", "500", "1k"] and pos[1] == pytest.approx(2.0)
    assert cd.log_ticks(2344, 7825)[1] == ["2k", "5k", "10k"]  # a narrow range: the round values around it
    assert cd.log_ticks(120, 3.2e6)[1] == ["1k", "10k", "100k", "1M"]  # wide: powers of ten only
    assert cd.log2_ticks([1, 64])[1] == ["1", "2", "4", "8", "16", "32", "64"]
    pos, _ = cd.log_ticks(2344, 26122)  # the smoke baseline's adapt rows: round ticks inside the data
    lo, hi = cd.axis_range(pos, math.log10(2344), math.log10(26122), 0.04)
    assert lo < math.log10(2344) and hi > math.log10(26122)  # and the axis still holds every point
    ticks, labels = cd.nice_ticks(0.8467, 0.9123)
    assert labels[0] == "0.84" and labels[-1] == "0.92" and all(len(x) <= 4 for x in labels)
    assert ticks[0] <= 0.8467 and ticks[-1] >= 0.9123


def test_pareto_chart_is_per_task_and_kind_with_front_ties_and_axis_titles(grid):
    lora = row(grid, "fake-lora", "adapt", "0.1")
    view = cd.quality_view(grid.rows, lora, "params")
    assert (view.kind, view.others) == ("adapt", [("tiny", "compress")])
    assert "trainable parameters" in view.x_title and "higher is better" in view.y_title
    assert {p.label for p in view.points} == {"fake-ref full", "fake-head 0.05", "fake-head 0.1", "fake-head 0.3",
                                              "fake-lora 0.1"}
    assert [p.method for p in view.points if p.selected] == ["fake-lora"]
    xs = [x for x, _ in view.front]
    assert xs == sorted(xs) and (300.0, pytest.approx(0.857)) not in view.front
    tied = [p for p in view.ranges() if p.tie]
    assert [p.label for p in tied] == ["fake-head 0.3"] and tied[0].ci > 0  # a tie is drawn as its 95% interval
    compress = cd.quality_view(grid.rows, row(grid, "fake-width", "compress", "0.1"), "params")
    assert "stored parameters" in compress.x_title and {p.method for p in compress.points} == {"fake-ref", "fake-width"}


def test_each_method_keeps_one_colour_and_the_front_has_its_own(grid):
    colors = cd.method_colors(grid.rows)
    assert len(set(colors.values())) == len(colors) == 4 and cd.FRONT_COLOR not in colors.values()


def test_memory_bars_fit_their_axis_and_latency_lines_per_batch(grid):
    view = cd.memory_view(grid.rows, grid.rows[0])
    assert len(view.labels) == len(GRID) and all("(" in label for label in view.labels)  # the kind is named
    top = max(view.totals)
    assert cd.nice_ticks(0.0, top * 1.02)[0][-1] >= top  # the axis reaches the longest bar
    batch = cd.batch_view(grid.rows, row(grid, "fake-head", "adapt", "0.1"))
    assert batch.sizes == [1, 8, 64] and len(batch.lines) == 5 and batch.kind == "adapt"


def test_table_has_human_units_marks_and_interleaved_ratios(grid):
    headers = [h for _, h in grid.columns]
    assert headers[:5] == ["", "task", "kind", "method", "budget"] and len(table.KEY_COLUMNS) == 5
    assert headers.index("×ref bs1") == headers.index("p50 ms bs1") + 1  # the ratio beside the reference's p50
    over = row(grid, "fake-head", "adapt", "0.3")
    text = dict(zip([c for c, _ in grid.columns], over.text))
    assert over.over_budget and over.tie and text["mark"] == "≈!" and text["status"] == "ok over budget"
    assert text["latency_ratio[inference_interleaved]@bs1"] == "1.35×"  # beyond the 1.3 spread: no noise mark
    small = dict(zip([c for c, _ in grid.columns], row(grid, "fake-head", "adapt", "0.05").text))
    assert small["latency_ratio[inference_interleaved]@bs1"] == "1.10×~"  # inside the noise band
    assert small["latency_p50[inference]@bs1"] == "0.118" and small["params_stored"] == "1.05k"
    assert small["mark"] == "★"


def test_a_run_timing_inference_interleaved_only_shows_those_figures():
    """`cell_inference_latency = false`: no per-cell inference p50; the table, the sort and the
    latency-by-batch chart take the interleaved pass's."""
    recs = []
    for r in grid_records("r-ab"):
        if r["metric"] == "latency_p50" and r["phase"] == "inference":
            if r["batch_size"] == 8:
                continue
            r = {**r, "phase": "inference_interleaved"}
        recs.append(r)
    data = model.table_data(recs)
    headers = [h for _, h in data.columns]
    assert "p50 ms bs1 AB" in headers and headers.index("×ref bs1") == headers.index("p50 ms bs1 AB") + 1
    assert ("latency_p50[inference_interleaved]@bs1", "latency") in table.sort_cycle(data)
    assert [b for b, _ in cd.batch_latencies(row(data, "fake-head", "adapt", "0.1"))] == [1, 64]


def test_sort_keys_people_use_come_first(grid):
    assert [k for k, _ in table.sort_cycle(grid)][:2] == ["quality", table.PARAMS]
    by_params = table.sort_rows(grid.rows, table.PARAMS, False)
    assert [model.params_of(r) for r in by_params] == sorted(model.params_of(r) for r in grid.rows)
    assert table.best_first("quality", grid.rows) and not table.best_first(table.PARAMS, grid.rows)


def test_human_units():
    assert fmt.metric_value("latency_p50[inference]@bs1", 2.868e-05) == ("0.0287", "ms")
    assert fmt.metric_value("memory_peak[train_step]@bs64", 3 * 2**20) == ("3", "MiB")
    assert fmt.metric_value("params_stored", 12345.0) == ("12.3k", "")
    assert fmt.count(2.5e6) == "2.5M" and fmt.size_bytes(1536) == "1.5 KiB"


def test_runs_list_nested_folders_and_count_real_cells_only(tmp_path):
    grid_run(tmp_path)  # 16 cells and the interleave pseudo-cell
    base = fixed_run(tmp_path / "baseline", "smoke-base", "2024-01-01T00:00:00", {"fake-head": 0.8, "fake-width": 0.7})
    (base / "cells.jsonl").unlink()  # a committed baseline keeps records.parquet only
    (tmp_path / "exports" / "x").mkdir(parents=True)
    found = {r.run_id: r for r in runs.list_runs(tmp_path)}
    assert set(found) == {"20250103-000000-grid-ui-cccc", "smoke-base"}
    assert (found["20250103-000000-grid-ui-cccc"].done, found["20250103-000000-grid-ui-cccc"].total) == (16, 16)
    assert (found["smoke-base"].done, found["smoke-base"].where) == (4, "baseline")
    sig = runs.signature(tmp_path)
    with (base / "run.json").open("a") as f:
        f.write(" ")
    assert runs.signature(tmp_path) != sig  # a poll notices a run that moved on


def test_estimate_uses_past_cell_times(tmp_path):
    grid_run(tmp_path)
    durations, source = runs.past_durations(tmp_path, "grid-ui")
    assert source == "20250103-000000-grid-ui-cccc" and durations[("tiny", "fake-ref", "adapt")] == pytest.approx(3.0)

    class C:
        def __init__(self, method):
            self.task, self.shown_name, self.kind = "tiny", method, "adapt"
    text = runs.estimate([C("fake-ref"), C("fake-ref"), C("never-run")], durations, source, 2)
    assert text.startswith("3 cells, about 0m") and "1 never timed" in text
    assert "time unknown" in runs.estimate([C("x")], {}, "", 1)


def test_cli_and_app_import_neither_torch_nor_polars_before_the_first_frame():
    code = ("import sys\n"
            "import lowdim_bench.tui.app as a\n"
            "from lowdim_bench import cli\n"
            "seen = {}\n"
            "a.main = lambda argv: seen.setdefault('heavy', [m for m in ('torch', 'polars') if m in sys.modules]) and 0\n"
            "cli.main([])\n"
            "assert seen['heavy'] == [], seen\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_compare_puts_headline_metrics_first_and_uses_the_gate(tmp_path):
    a = fixed_run(tmp_path, "a", "2025-01-01T00:00:00", {"fake-head": 0.8, "fake-width": 0.7})
    b = fixed_run(tmp_path, "b", "2025-01-02T00:00:00", {"fake-head": 0.8, "fake-width": 0.6})
    rows = model.compare_rows(a, b)
    assert rows[0].regression and rows[0].text[2] == "fake-width" and rows[0].text[4].startswith("quality")
    ranks = [runs.headline_rank(r.text[4].split(" ")[0]) for r in rows if not r.regression]
    assert ranks == sorted(ranks)
    headline = runs.filter_compare(rows, "", headline_only=True, regressions_only=False)
    assert all(r.headline for r in headline) and len(headline) < len(rows)
    assert [r.text[2] for r in runs.filter_compare(rows, "head latency", False, False)] and all(
        "fake-head" in r.text and "latency" in r.text[4] for r in runs.filter_compare(rows, "head latency", False, False))
    assert not hasattr(runs, "REGRESSION_TOLERANCE")  # the gate's rule, not the app's own

