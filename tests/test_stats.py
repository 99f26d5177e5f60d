"""Student-t quantiles and tails, intervals over seeds, paired comparisons, seed counts."""
import math

import polars as pl
import pytest

from lowdim_bench import report, stats

# Two-sided 95% critical values t(0.975, df) as printed in standard tables.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 29: 2.045, 30: 2.042, 120: 1.980}


@pytest.mark.parametrize("df,expected", sorted(T975.items()))
def test_t_quantile_matches_printed_table(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_is_symmetric_and_tends_to_normal():
    assert stats.t_quantile(0.5, 7) == 0.0
    assert stats.t_quantile(0.025, 7) == pytest.approx(-stats.t_quantile(0.975, 7), rel=1e-12)
    assert stats.t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_t_sf_closed_forms():
    # df = 1 is the Cauchy distribution: P(T > t) = 1/2 - atan(t)/pi
    for t in (-3.0, -0.5, 0.0, 0.7, 10.0):
        assert stats.t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-12)
    # df = 2: P(T > t) = 1/2 (1 - t / sqrt(2 + t^2))
    for t in (-2.0, 0.0, 1.3, 50.0):
        assert stats.t_sf(t, 2) == pytest.approx(0.5 * (1 - t / math.sqrt(2 + t * t)), abs=1e-12)
    assert stats.t_sf(math.inf, 3) == 0.0 and stats.t_sf(-math.inf, 3) == 1.0


def test_t_functions_agree_with_scipy_where_installed():
    sp = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 8, 17, 40, 250, 2.5):
        for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.01):
            assert stats.t_quantile(p, df) == pytest.approx(sp.t.ppf(p, df), rel=1e-9, abs=1e-9)
        for t in (-4.0, -0.2, 0.0, 1.0, 3.5, 30.0):
            assert stats.t_sf(t, df) == pytest.approx(sp.t.sf(t, df), abs=1e-12)


def test_betainc_edges_and_bad_input():
    assert stats.betainc(2, 3, 0.0) == 0.0 and stats.betainc(2, 3, 1.0) == 1.0
    # I_x(1, 1) = x; I_x(a, 1) = x^a
    assert stats.betainc(1, 1, 0.3) == pytest.approx(0.3, abs=1e-14)
    assert stats.betainc(2.5, 1, 0.4) == pytest.approx(0.4 ** 2.5, abs=1e-14)
    with pytest.raises(ValueError, match="x=1.5"):
        stats.betainc(1, 1, 1.5)
    with pytest.raises(ValueError, match="got 1.0"):
        stats.t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="got 0"):
        stats.t_sf(1.0, 0)


def test_mean_ci_by_hand():
    xs = [0.91, 0.93, 0.90, 0.94]
    ci = stats.mean_ci(xs)
    mean = sum(xs) / 4
    s = math.sqrt(sum((x - mean) ** 2 for x in xs) / 3)
    assert ci.n == 4 and ci.mean == pytest.approx(mean) and ci.std == pytest.approx(s)
    assert ci.half_width == pytest.approx(3.182446 * s / 2, rel=1e-6)
    assert ci.low == pytest.approx(mean - ci.half_width) and ci.high == pytest.approx(mean + ci.half_width)


def test_mean_ci_one_value_has_no_interval_and_nans_are_dropped():
    one = stats.mean_ci([0.5, math.nan])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.half_width) and math.isnan(one.low)
    none = stats.mean_ci([])
    assert none.n == 0 and math.isnan(none.mean)
    with pytest.raises(ValueError, match="level"):
        stats.mean_ci([1, 2], level=95)


def test_overlap_uses_the_point_when_there_is_no_interval():
    a = stats.mean_ci([1.0, 1.2, 1.1])
    assert a.overlaps(stats.mean_ci([1.15]))
    assert not a.overlaps(stats.mean_ci([5.0]))
    assert not stats.mean_ci([1.0]).overlaps(stats.mean_ci([1.1]))
    assert stats.mean_ci([1.0]).overlaps(stats.mean_ci([1.0]))


def test_paired_uses_shared_seeds_only_and_removes_common_spread():
    # big seed-to-seed spread, a steady +0.02 gain: unpaired intervals overlap, paired is clear
    a = {0: 0.70, 1: 0.90, 2: 0.80, 3: 0.60, 9: 0.1}
    b = {0: 0.72, 1: 0.921, 2: 0.819, 3: 0.62, 7: 0.99}
    p = stats.paired(a, b)
    assert p.seeds == (0, 1, 2, 3) and p.n == 4
    assert p.diff.mean == pytest.approx(0.02, abs=1e-3)
    assert p.significant and p.p_value < 0.001
    assert stats.mean_ci([a[s] for s in p.seeds]).overlaps(stats.mean_ci([b[s] for s in p.seeds]))


def test_paired_t_and_p_by_hand():
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    b = {0: 1.5, 1: 2.1, 2: 3.7}  # diffs 0.5, 0.1, 0.7
    p = stats.paired(a, b)
    d = [0.5, 0.1, 0.7]
    m = sum(d) / 3
    s = math.sqrt(sum((x - m) ** 2 for x in d) / 2)
    t = m / (s / math.sqrt(3))
    assert p.t == pytest.approx(t)
    assert p.p_value == pytest.approx(2 * stats.t_sf(t, 2))
    assert not p.significant  # t = 2.65 < 4.30


def test_paired_edge_cases():
    assert math.isnan(stats.paired({0: 1.0}, {0: 2.0}).p_value)
    assert not stats.paired({0: 1.0}, {0: 2.0}).significant
    same = stats.paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same.t == 0.0 and same.p_value == 1.0 and not same.significant
    shift = stats.paired({0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.5})  # identical differences: no spread
    assert shift.t == math.inf and shift.significant
    assert stats.paired({0: 1.0, 1: math.nan}, {0: 2.0, 1: 3.0}).seeds == (0,)


def rec(method, seed, value, metric="quality", budget=0.1, status="ok"):
    return {"task": "t", "kind": "adapt", "method": method, "budget": budget, "seed": seed, "metric": metric,
            "value": value, "status": status, "cell_key": f"{method}{seed}"}


def test_per_seed_and_seed_counts_from_records():
    df = report.to_frame([rec("a", 0, 0.8), rec("a", 1, 0.9), rec("a", 2, math.nan, "error", status="failed"),
                          rec("b", 0, 0.7), rec("a", 0, 123.0, metric="params_trainable")])
    assert stats.per_seed(df, "t", "adapt", "a", budget=0.1) == {0: 0.8, 1: 0.9}
    counts = {r["method"]: (r["n_seeds"], r["seeds"]) for r in stats.seed_counts(df).to_dicts()}
    assert counts == {"a": (2, [0, 1]), "b": (1, [0])}
    with pytest.raises(ValueError, match="method='c'"):
        stats.per_seed(df, "t", "adapt", "c", budget=0.1)


# ---- the summary's interval columns and the Pareto front with ties --------------------------------
def rows_of(method, params, qualities, budget=0.1):
    out = []
    for seed, q in enumerate(qualities):
        out += [{**rec(method, seed, q, budget=budget), "higher_is_better": True},
                rec(method, seed, params, metric="params_trainable", budget=budget)]
    return out


def test_summary_has_ci95_and_seed_counts():
    s = report.summary(report.to_frame(rows_of("a", 100, [0.90, 0.92]) + rows_of("one", 10, [0.5])))
    a = s.row(by_predicate=pl.col("method") == "a", named=True)
    assert a["quality_n"] == 2 and a["n_seeds"] == 2
    assert a["quality_ci95"] == pytest.approx(12.7062 * a["quality_std"] / math.sqrt(2), rel=1e-4)
    one = s.row(by_predicate=pl.col("method") == "one", named=True)
    assert one["quality_n"] == 1 and one["quality_ci95"] is None
    headers, _ = report.table_rows(s)
    assert "±95%" in headers and "tie" in headers


def test_pareto_tie_where_intervals_overlap():
    frame = report.to_frame(rows_of("small", 50, [0.80, 0.96, 0.88])      # on the front
                            + rows_of("close", 100, [0.78, 0.95, 0.84])   # dominated, intervals overlap
                            + rows_of("far", 150, [0.30, 0.31, 0.32]))    # dominated, clearly worse
    s = report.summary(frame)
    flags = {r["method"]: (r["pareto"], r["pareto_tie"]) for r in s.to_dicts()}
    assert flags == {"small": (True, False), "close": (False, True), "far": (False, False)}


# ---- verdicts -----------------------------------------------------------------------------------
def test_verdict_needs_the_interval_on_one_side():
    assert stats.verdict([0.03, 0.02, 0.025]).verdict == "held"
    assert stats.verdict([-0.03, -0.02, -0.025]).verdict == "did not hold"
    v = stats.verdict({0: 0.02, 1: -0.01, 2: 0.015})  # overlapping: the interval straddles 0
    assert v.verdict == "inconclusive" and v.low < 0 < v.high and "contains 0" in v.reason
    assert v.n == 3 and 0.05 < v.p_value < 1


def test_verdict_with_two_seeds_is_inconclusive_whatever_the_gap():
    v = stats.verdict({0: 0.5, 1: 0.6})
    assert v.verdict == "inconclusive" and v.n == 2 and "need 3" in v.reason
    assert stats.verdict([1.0]).verdict == "inconclusive"
    assert stats.verdict([]).verdict == "not measured"


def test_verdict_matches_the_paired_test_and_handles_constant_margins():
    a, b = {0: 0.90, 1: 0.92, 2: 0.91, 3: 0.93}, {0: 0.88, 1: 0.915, 2: 0.90, 3: 0.925}
    pair = stats.paired(b, a)
    v = stats.verdict({s: a[s] - b[s] for s in a})
    assert v.p_value == pytest.approx(pair.p_value) and v.low == pytest.approx(pair.diff.low)
    # a margin that does not vary over seeds (parameter counts): decided by its sign
    assert stats.verdict([0.0, 0.0, 0.0], strict=False).verdict == "held"  # "fewer" met with equality
    assert stats.verdict([0.0, 0.0, 0.0], strict=True).verdict == "did not hold"  # a tie is not "better"


def test_combine_checks_into_a_claim():
    assert stats.combine(["held", "held"]) == "held"
    assert stats.combine(["held", "inconclusive"]) == "inconclusive"
    assert stats.combine(["inconclusive", "did not hold"]) == "did not hold"
    assert stats.combine(["held", "not measured"]) == "not measured"
