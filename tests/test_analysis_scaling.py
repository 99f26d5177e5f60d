"""The scaling analysis on synthetic records with known exponents: fits, intervals, checks, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lowdim_bench import api, report
from lowdim_bench_builtin.analyses.scaling import ScalingAnalysis, validate_fits

SIZES = {"s1": 1e3, "s2": 1e4, "s3": 1e5}
VIEW = api.SuiteView(tuple(SIZES), {"fast": "fast", "slow": "slow", "other": "other"}, None)


def records(laws: dict[str, tuple[float, float]], seeds=(0, 1, 2, 3), noise=0.02, sizes=SIZES, knob_x=False):
    """y = c x^a times log-normal noise, one cell per (method, task = size, seed); x is the metric
    "n" (or the knob)."""
    rng = np.random.default_rng(0)
    rows = []
    for method, (c, a) in laws.items():
        for task, x in sizes.items():
            for seed in seeds:
                base = {"task": task, "kind": "solve", "method": method, "seed": seed, "status": "ok",
                        "knob": x if knob_x else 8.0, "budget": None, "cell_key": f"{method}{task}{seed}", "unit": ""}
                y = c * x**a * math.exp(noise * rng.standard_normal())
                rows += [{**base, "metric": "n", "value": x}, {**base, "metric": "t", "value": y},
                         {**base, "metric": "t", "value": 1e9, "step": 1}]  # a trace point: never a figure
    return report.to_frame(rows)


def run(frame, fits):
    options = validate_fits(fits, VIEW)
    ctx = api.AnalysisContext(run_dir=None, records=frame, summary=report.summary(frame), options=options,
                              suite=VIEW, artefacts=None)
    return ScalingAnalysis().run(ctx)


def fit(**extra):
    return {"name": "f", "x": "n", "y": "t", **extra}


def rows_of(result, what):
    return [r for r in result.table.to_dicts() if r["what"] == what]


def test_exponents_and_their_intervals_recover_the_laws():
    res = run(records({"fast": (2.0, 1.0), "slow": (1.0, 1.5)}), [fit()])
    ex = {r["method"]: r for r in rows_of(res, "exponent")}
    for method, a in (("fast", 1.0), ("slow", 1.5)):
        r = ex[method]
        assert r["exponent"] == pytest.approx(a, abs=0.03)
        assert r["ci95_low"] < r["exponent"] < r["ci95_high"] and r["ci95_high"] - r["ci95_low"] < 0.1
        assert r["seeds"] == 4 and r["sizes"] == 3 and r["r2"] > 0.99
    per_seed = [r for r in res.records if r.metric == "scaling_exponent" and r.method == "slow"]
    assert sorted(r.seed for r in per_seed) == [0, 1, 2, 3] and all(r.phase == "f" for r in per_seed)


def test_checks_hold_fail_or_stay_inconclusive():
    frame = records({"fast": (2.0, 1.0), "slow": (1.0, 1.5)})
    slow = next(r["exponent"] for r in rows_of(run(frame, [fit()]), "exponent") if r["method"] == "slow")
    checks = [{"a": "fast", "b": "slow", "relation": "below"},
              {"a": "slow", "b": "fast", "relation": "below"},
              {"a": "fast", "b": "slow", "relation": "exponent_below"},
              {"a": "fast", "relation": "exponent_near", "value": 1.0, "tolerance": 0.1},
              {"a": "slow", "relation": "exponent_near", "value": 1.0, "tolerance": 0.1},
              {"a": "slow", "relation": "exponent_near", "value": slow, "tolerance": 0.001}]
    verdicts = [r["verdict"] for r in rows_of(run(frame, [fit(checks=checks)]), "check")]
    # the last: the interval is wider than the band, so neither inside nor outside it
    assert verdicts == ["held", "did not hold", "held", "held", "did not hold", "inconclusive"]


def test_two_seeds_are_inconclusive_and_fewer_than_three_sizes_give_no_exponent():
    frame = records({"fast": (2.0, 1.0), "slow": (1.0, 1.5)}, seeds=(0, 1))
    res = run(frame, [fit(checks=[{"a": "fast", "b": "slow", "relation": "below"},
                                  {"a": "fast", "b": "slow", "relation": "exponent_below"}])])
    assert [r["verdict"] for r in rows_of(res, "check")] == ["inconclusive", "inconclusive"]
    two = records({"fast": (2.0, 1.0)}, sizes={"s1": 1e3, "s2": 1e4})
    (r,) = rows_of(run(two, [fit(methods=["fast"])]), "exponent")
    assert r["seeds"] == 0 and r["exponent"] is None or math.isnan(r["exponent"])


def test_below_reports_where_the_pooled_fits_cross():
    frame = records({"fast": (10.0, 1.0), "slow": (0.01, 1.5)}, noise=0.0)
    (check,) = rows_of(run(frame, [fit(checks=[{"a": "fast", "b": "slow", "relation": "below"}])]), "check")
    assert "pooled fits cross at x = 1e+06" in check["measured"]  # 10 x = 0.01 x^1.5 at x = 1e6
    assert check["verdict"] == "did not hold"  # below 1e6 the slow law is the cheaper one


def test_the_knob_can_be_the_x_axis():
    frame = records({"fast": (1.0, 2.0)}, knob_x=True)
    (r,) = rows_of(run(frame, [fit(x="knob", methods=["fast"])]), "exponent")
    assert r["exponent"] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("raw, key, message", [
    ({"name": "f"}, None, "expected an array"),
    ([fit(), fit()], "[1].name", "used twice"),
    ([fit(tasks=["nope"])], "[0].tasks", "not in the suite's tasks"),
    ([fit(methods=["nope"])], "[0].methods", "names no method entry"),
    ([fit(checks=[{"a": "fast", "relation": "below"}])], "[0].checks[0].b", "needs `b`"),
    ([fit(checks=[{"a": "fast", "relation": "exponent_near"}])], "[0].checks[0].value", "needs `value`"),
    ([fit(methods=["fast"], checks=[{"a": "fast", "b": "slow"}])], "[0].checks[0].b", "not one of this fit's methods"),
    ([fit(checks=[{"a": "fast", "b": "slow", "relation": "faster"}])], "[0].checks[0].relation", "Input should be"),
    ([fit(y=None)], "[0].y", "Input should be a valid string"),
])
def test_bad_tables_are_config_errors_with_a_key(raw, key, message):
    with pytest.raises(api.ConfigError, match=message) as e:
        validate_fits(raw if isinstance(raw, list) or key is None else raw, VIEW)
    assert e.value.key == key
