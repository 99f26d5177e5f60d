"""The d_int90 analysis: smallest d reaching the threshold, "not reached", directions, the suite field."""
from __future__ import annotations

import polars as pl
import pytest

from conftest import write_suite
from lowdim_bench import api, report
from lowdim_bench_builtin.analyses import intrinsic_dim
from lowdim_bench_builtin.analyses.intrinsic_dim import Options, analyse
from lowdim_bench.registry import Registry
from lowdim_bench.suite import SuiteError, load_suite


def rec(method: str, knob: float | None, seed: int, value: float, *, task: str = "t", kind: str = "train",
        metric: str = "quality_val", hib: bool = True, status: str = "ok") -> dict:
    return {"task": task, "kind": kind, "method": method, "knob": knob, "seed": seed, "metric": metric,
            "value": value, "higher_is_better": hib, "status": status}


def frame(records: list[dict]) -> pl.DataFrame:
    return report.to_frame(records)


OPTS = Options(methods=["id"], baseline="dense")


def test_smallest_d_whose_seed_mean_reaches_90pct_of_dense() -> None:
    df = frame([rec("dense", None, s, 0.9) for s in (0, 1)]
               + [rec("id", 10, s, v) for s, v in ((0, 0.5), (1, 0.6))]
               + [rec("id", 100, s, v) for s, v in ((0, 0.80), (1, 0.83))]   # mean 0.815 >= 0.81
               + [rec("id", 1000, s, v) for s, v in ((0, 0.70), (1, 0.70))]  # a later dip changes nothing
               + [rec("id", 2000, s, 0.89) for s in (0, 1)])
    [r] = analyse(df, OPTS)
    assert (r.d_int, r.status) == (100, "reached")
    assert r.baseline == pytest.approx(0.9) and r.target == pytest.approx(0.81)
    assert [(d, n) for d, _, n in r.tried] == [(10, 2), (100, 2), (1000, 2), (2000, 2)]
    assert r.tried[1][1] == pytest.approx(0.815)


def test_not_reached_is_reported_never_the_largest_d() -> None:
    df = frame([rec("dense", None, 0, 0.9), rec("id", 10, 0, 0.3), rec("id", 2000, 0, 0.8)])
    [r] = analyse(df, OPTS)
    assert r.d_int is None and r.status == "not reached"


def test_mean_over_seeds_decides_not_the_best_seed() -> None:
    df = frame([rec("dense", None, 0, 1.0), rec("id", 50, 0, 0.95), rec("id", 50, 1, 0.5)])
    assert analyse(df, OPTS)[0].status == "not reached"


def test_lower_is_better_target_is_baseline_over_threshold() -> None:
    df = frame([rec("dense", None, 0, 2.0, hib=False), rec("id", 10, 0, 2.5, hib=False),
                rec("id", 20, 0, 2.2, hib=False), rec("id", 40, 0, 2.1, hib=False)])
    [r] = analyse(df, OPTS)
    assert r.target == pytest.approx(2.0 / 0.9) and r.d_int == 20 and not r.higher_is_better


def test_failed_cells_and_other_tasks_kinds_metrics_are_left_out() -> None:
    df = frame([rec("dense", None, 0, 0.9), rec("dense", None, 0, 0.1, kind="adapt"),
                rec("dense", None, 0, 0.9, metric="quality"), rec("id", 10, 0, 0.89, metric="quality"),                       # test split: not used
                rec("id", 10, 1, float("nan"), metric="error", status="failed"),
                rec("id", 20, 0, 0.85), rec("id", 20, 0, 0.1, task="other")])
    other, r = analyse(df, OPTS)  # sorted by task
    assert r.d_int == 20 and r.tried == [(20, pytest.approx(0.85), 1)]
    assert (other.task, other.status) == ("other", "no baseline")
    _, t = analyse(df, Options(methods=["id"], baseline="dense", metric="quality"))
    assert t.d_int == 10


def test_no_baseline_and_one_row_per_task_kind_method() -> None:
    df = frame([rec("id", 10, 0, 0.5, kind="adapt"), rec("said", 10, 0, 0.5, kind="adapt"),
                rec("dense", None, 0, 0.5, kind="adapt", task="u"), rec("id", 10, 0, 0.5, kind="adapt", task="u")])
    out = analyse(df, Options(methods=["id", "said"], baseline="dense", threshold=0.5))
    assert [(r.task, r.method, r.status) for r in out] == [
        ("t", "id", "no baseline"), ("t", "said", "no baseline"), ("u", "id", "reached")]


def test_analysis_table_markdown_and_rendering(tmp_path) -> None:
    df = frame([rec("dense", None, 0, 0.9), rec("id", 10, 0, 0.2), rec("id", 30, 0, 0.85),
                rec("dense", None, 0, 0.9, task="w"), rec("id", 10, 0, 0.2, task="w")])
    options = {"methods": ["id"], "baseline": "dense", "threshold": 0.9, "metric": "quality_val"}
    analysis = intrinsic_dim.IntrinsicDimension()
    result = analysis.run(api.AnalysisContext(tmp_path, df, report.summary(df), options,
                                              api.SuiteView(("t", "w"), {"dense": "dense", "id": "intrinsic"}, "dense"),
                                              artefacts=None))
    table = result.table
    assert table["d_int"].to_list() == [30, None] and table["status"].to_list() == ["reached", "not reached"]
    md = result.markdown
    assert "## Intrinsic dimension" in md and "| t | train | id | 30 |" in md and "not reached" in md
    out = analysis.render(table)
    assert "d_int90" in out and "10:0.2(1) 30:0.85(1)" in out and "not reached" in out


SUITE = """
name = "id"
seeds = [0]
measure = []
tasks = ["tiny"]
[methods.dense]
kinds = ["train"]
[methods.id-ff]
method = "intrinsic"
kinds = ["train"]
knobs = [2, 60]
[intrinsic_dimension]
threshold = 0.5
"""


def test_suite_field_defaults_and_errors(tmp_path, fake_plugins) -> None:
    reg = Registry.load()
    suite = load_suite(write_suite(tmp_path / "s.toml", SUITE), reg)
    assert suite.analyses["d_int90"] == {"methods": ["id-ff"], "baseline": "dense", "threshold": 0.5,
                                         "metric": "quality_val"}
    assert "d_int90" not in load_suite(write_suite(tmp_path / "s.toml", SUITE.replace("[intrinsic_dimension]\n", "#")),
                                       reg).analyses
    bad = {
        "threshold = 1.5": r"\[intrinsic_dimension\] field 'threshold': expected a number in \(0, 1\], got 1.5",
        'methods = ["lora"]': r"'lora' is not a method entry of the suite; entries: \['dense', 'id-ff'\]",
        'baseline = "full"': r"field 'baseline': 'full' is not a method entry",
        'metric = "loss"': r"field 'metric': expected one of \['quality_val', 'quality'\]",
        "d = 3": r"field 'd': unknown field",
    }
    for line, message in bad.items():
        with pytest.raises(SuiteError, match=message):
            load_suite(write_suite(tmp_path / "s.toml", SUITE.replace("threshold = 0.5", line)), reg)


@pytest.mark.slow
def test_run_writes_and_prints_the_d_int_table(tmp_path, fake_plugins, capsys) -> None:
    from lowdim_bench.cli import main

    suite = write_suite(tmp_path / "s.toml", SUITE)
    assert main(["run", str(suite), "--out", str(tmp_path / "r"), "--device", "cpu", "--jobs", "2"]) == 0
    run_dir = next((tmp_path / "r").iterdir())
    table = pl.read_csv(run_dir / "d_int90.csv")
    assert table["method"].to_list() == ["id-ff"] and table["status"][0] in ("reached", "not reached")
    assert table["tried"][0].startswith("2:") and " 60:" in table["tried"][0]
    assert "## Intrinsic dimension" in (run_dir / "summary.md").read_text()
    out = capsys.readouterr().out
    assert "intrinsic dimension (d_int):" in out and "d_int50" in out and "id-ff" in out
