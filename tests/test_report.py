"""Summaries, the Pareto front and comparison on hand-made records."""
import math

import polars as pl
import pytest

from lowdim_bench import report


def rec(method, seed, metric, value, kind="adapt", budget=0.1, status="ok", **kw):
    return {"run_id": "r", "suite": "s", "task": "t", "method": method, "kind": kind, "budget": budget,
            "seed": seed, "metric": metric, "value": value, "unit": "u", "status": status,
            "cell_key": f"{method}{seed}{budget}", "higher_is_better": True if metric == "quality" else False, **kw}


def frame():
    rows = []
    for method, q, p in (("a", 0.9, 100), ("b", 0.8, 50), ("c", 0.7, 80)):
        for seed, dq in ((0, -0.01), (1, 0.01)):
            rows += [rec(method, seed, "quality", q + dq), rec(method, seed, "params_trainable", p)]
    rows.append(rec("d", 0, "error", math.nan, status="failed", error="boom"))
    return report.to_frame(rows)


def test_summary_means_spread_and_failures():
    s = report.summary(frame())
    a = s.row(by_predicate=pl.col("method") == "a", named=True)
    assert a["quality"] == pytest.approx(0.9) and a["quality_std"] == pytest.approx(0.01414, rel=1e-3)
    assert a["n_seeds"] == 2 and a["n_failed"] == 0
    d = s.row(by_predicate=pl.col("method") == "d", named=True)
    assert d["n_failed"] == 1 and d["first_error"] == "boom" and d["n_seeds"] == 0


def test_pareto_front_quality_vs_params():
    s = report.summary(frame())
    front = dict(zip(s["method"], s["pareto"]))
    assert front == {"a": True, "b": True, "c": False, "d": False}  # c: larger and worse than b


def test_pareto_respects_lower_is_better():
    rows = [rec("a", 0, "quality", 2.0), rec("a", 0, "params_trainable", 10),
            rec("b", 0, "quality", 3.0), rec("b", 0, "params_trainable", 10)]
    for r in rows:
        r["higher_is_better"] = False if r["metric"] == "quality" else r["higher_is_better"]
    s = report.summary(report.to_frame(rows))
    assert dict(zip(s["method"], s["pareto"])) == {"a": True, "b": False}


def test_compare_deltas():
    a = frame()
    b = a.with_columns(pl.when(pl.col("metric") == "quality").then(pl.col("value") - 0.1)
                       .otherwise(pl.col("value")).alias("value"))
    c = report.compare(a, b)
    row = c.row(by_predicate=(pl.col("method") == "a") & (pl.col("metric") == "quality"), named=True)
    assert row["delta"] == pytest.approx(-0.1) and row["rel"] == pytest.approx(-0.1 / 0.9)
    assert "quality" in report.render_compare(c) and "| a |" not in report.render_compare(c)
    assert report.render_markdown_compare(c).startswith("| task |")


def test_render_table_units():
    rows = [rec("a", 0, "latency_p50", 0.002 * bs, phase="inference", batch_size=bs) for bs in (16, 1, 2)]
    rows.append(rec("a", 0, "quality", 0.5))
    text = report.render_table(report.summary(report.to_frame(rows)))
    header, _, row = text.splitlines()
    assert header.index("bs1 ms/cell") < header.index("bs2 ms/cell") < header.index("bs16 ms/cell")
    assert row.split()[-4:-1] == ["2", "4", "32"]  # milliseconds, in batch-size order


def test_sizes_sort_numerically():
    rows = [rec("a", 0, "quality", 0.5, budget=None, knob=k) for k in (1000.0, 200.0, 30.0)]
    rows += [rec("a", 0, "quality", 0.5, budget=b) for b in (0.3, 0.05)]
    s = report.summary(report.to_frame(rows))
    assert s["size"].to_list() == ["0.05", "0.3", "knob 30", "knob 200", "knob 1000"]
