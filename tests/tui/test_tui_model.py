"""The app's computations without Textual: overrides, best/Pareto marks, sorting, reports, compare."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import fixed_registry, fixed_run
from lowdim_bench.tui import model, session


@pytest.mark.parametrize("text, expected", [("", None), ("0.05, 0.1", [0.05, 0.1]), ("1 0.5", [1.0, 0.5])])
def test_parse_budgets(text, expected):
    assert model.parse_budgets(text) == expected


@pytest.mark.parametrize("text, message", [("0.1, abc", "budget 'abc' is not a number"),
                                           ("0", "budget '0' is not a fraction in (0, 1]"),
                                           ("1.5", "budget '1.5' is not a fraction in (0, 1]")])
def test_bad_budget_names_the_value(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        model.parse_budgets(text)


def test_parse_seeds_and_jobs():
    assert model.parse_seeds("0 1,2") == [0, 1, 2]
    for text, msg in (("-1", "seed '-1' is negative"), ("1 1", "seed '1' is given twice"), ("a", "seed 'a' is not")):
        with pytest.raises(ValueError, match=msg):
            model.parse_seeds(text)
    assert model.parse_jobs("3") == 3
    with pytest.raises(ValueError, match="jobs 0 must be at least 1"):
        model.parse_jobs("0")


def _row(method, kind, quality, params, latency, hib=True):
    return model.Row(("t", kind, method, "0.1"), {"quality": quality, "params_stored": params,
                                                  "latency_p50[inference]@bs1": latency, "higher_is_better": hib,
                                                  "n_seeds": 1}, [], False, 0)


def test_best_per_column_within_task_and_kind_with_direction():
    rows = [_row("a", "compress", 0.9, 100, 0.002), _row("b", "compress", 0.8, 50, 0.001), _row("c", "adapt", 0.1, 1, 9.0)]
    model.mark_best(rows, ["quality", "params_stored", "latency_p50[inference]@bs1", "n_seeds"])
    assert rows[0].best == {"quality"}
    assert rows[1].best == {"params_stored", "latency_p50[inference]@bs1"}
    assert rows[2].best == set()  # alone in its kind
    low = [_row("a", "train", 2.0, 1, 1, hib=False), _row("b", "train", 1.5, 1, 1, hib=False)]
    model.mark_best(low, ["quality"])
    assert low[1].best == {"quality"} and low[0].best == set()  # bits/byte: lower is better


def test_sort_keeps_missing_values_last_and_filter_matches_words():
    rows = [_row("a", "compress", 0.9, 100, 0.002), _row("b", "compress", None, 50, 0.001),
            _row("c", "adapt", 0.1, 1, 9.0)]
    assert [r.group[2] for r in model.sort_rows(rows, "quality", True)] == ["a", "c", "b"]
    assert [r.group[2] for r in model.sort_rows(rows, "quality", False)] == ["c", "a", "b"]
    assert [r.group[2] for r in model.filter_rows(rows, "COMPRESS b")] == ["b"]


def test_table_data_aggregates_seeds_marks_pareto_and_keeps_records(tmp_path):
    run = fixed_run(tmp_path, "r1", "2025-01-01T00:00:00", {"fake-head": 0.8, "fake-width": 0.7})
    data = model.table_data(model.load_records(run))
    assert [r.group for r in data.rows] == [("tiny", "adapt", "fake-head", "full"), ("tiny", "compress", "fake-width", "0.5")]
    head = data.rows[0]
    assert head.values["quality"] == pytest.approx(0.805) and head.values["n_seeds"] == 2
    assert head.values["quality_std"] == pytest.approx(0.00707, abs=1e-5)
    assert not head.pareto and head.text[0] == ""  # alone in its task and kind: a front of one says nothing
    assert len(data.records[head.group]) == 20 and head.text[-1] == "ok"
    assert [model.params_of(r) for r in data.rows] == [51.0, 175.0]  # trainable for adapt, stored otherwise


def test_list_runs_newest_first_and_compare_marks_regressions(tmp_path):
    a = fixed_run(tmp_path, "20250101-a", "2025-01-01T00:00:00", {"fake-head": 0.8, "fake-width": 0.7})
    b = fixed_run(tmp_path, "20250102-b", "2025-01-02T00:00:00", {"fake-head": 0.9, "fake-width": 0.6}, latency_scale=1.05)
    (tmp_path / "not-a-run").mkdir()
    runs = model.list_runs(tmp_path)
    assert [r.run_id for r in runs] == ["20250102-b", "20250101-a"]
    assert (runs[0].done, runs[0].total, runs[0].status, runs[0].device) == (4, 4, "finished", "test cpu")
    rows = {(r.text[2], r.text[4].split(" ")[0]): r for r in model.compare_rows(a, b)}
    assert rows[("fake-width", "quality")].regression and rows[("fake-head", "quality")].improvement
    assert not rows[("fake-head", "latency_p50[inference]@bs1")].regression  # 5 % is within the 10 % tolerance


def test_catalog_groups_methods_by_kind_and_plugin_and_lists_broken(fake_plugins):
    cat = model.build_catalog(fixed_registry(), [], devices=["cuda:0"])
    groups = [(k, p) for k, p, _ in cat.method_groups()]
    assert groups == [("adapt", "fake-dist 0.1"), ("compress", "fake-dist 0.1")]
    assert [p.name for p in cat.broken] == ["ghost"] and cat.devices == ["auto", "cpu", "cuda:0"]
    assert cat.tasks == ["tiny"]


def test_selection_round_trips_through_the_state_file(tmp_path):
    sel = model.Selection(["lora"], ["digits-mlp"], "cpu", "0.1", "0 1", "2")
    model.save_selection(tmp_path / "s.toml", sel, tmp_path / "sel.json")
    assert model.saved_selection(tmp_path / "s.toml", tmp_path / "sel.json") == sel
    assert model.saved_selection(tmp_path / "other.toml", tmp_path / "sel.json") is None


def test_eta_uses_the_mean_cell_time_of_this_session():
    s = session.RunState(state="running", total=10, skipped=2, done=4, started_at=100.0)
    assert s.eta_s(now=120.0) == pytest.approx(10.0 * 6)  # 2 cells in 20 s, 6 left
    assert session.RunState(state="running", total=3, started_at=0.0).eta_s(now=5.0) is None


def test_resume_command_is_the_cli():
    cmd = session.resume_command("reports/x", "cpu", 2)
    assert cmd[1:] == ["-m", "lowdim_bench.cli", "run", "--resume", "reports/x", "--device", "cpu", "--jobs", "2"]


def test_model_and_session_do_not_import_textual():
    code = ("import sys, lowdim_bench.tui.model, lowdim_bench.tui.session; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('textual', 'plotext', 'textual_plotext')]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
