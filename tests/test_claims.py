"""Paper claims: parsing from a suite, evaluation against a summary, and the run's claims.csv."""
import polars as pl
import pytest

from conftest import write_suite
from lowdim_bench import report
from lowdim_bench_builtin.analyses import claims
from lowdim_bench.registry import Registry
from lowdim_bench.suite import SuiteError, load_suite


def records(noise=(0.0, 0.0, 0.0)):
    """Three seeds: b@0.1 beats a@0.1 by 0.02 (+ per-seed noise on a), b@0.5 beats both."""
    rows = []
    for seed, eps in zip((0, 1, 2), noise):
        for method, budget, q, p in (("a", 0.1, 0.90 + eps + 0.001 * seed, 10), ("b", 0.1, 0.92 + 0.001 * seed, 160),
                                     ("b", 0.5, 0.95, 800)):
            rows += [{"task": "t", "kind": "adapt", "method": method, "budget": budget, "seed": seed, "metric": m,
                      "value": v, "unit": "u", "status": "ok", "cell_key": f"{method}{budget}{seed}",
                      "higher_is_better": True if m == "quality" else False}
                     for m, v in (("quality", q), ("params_trainable", p))]
    return report.to_frame(rows)


def evaluate(claim, recs=None):
    recs = records() if recs is None else recs
    return claims.evaluate(report.summary(recs), [claim], recs)


@pytest.mark.parametrize("check, verdict", [
    (claims.Check("a@0.1", "b@0.1", "quality", "better"), "did not hold"),
    (claims.Check("b@0.5", "a@0.1", "quality", "better"), "held"),
    (claims.Check("a@0.1", "b@0.1", "quality", "not_worse", tolerance=0.03), "held"),
    (claims.Check("a@0.1", "b@0.1", "quality", "not_worse", tolerance=0.01), "did not hold"),
    (claims.Check("a@0.1", "b@0.1", "params_trainable", "fewer", factor=16), "held"),
    (claims.Check("a@0.1", "b@0.1", "params_trainable", "fewer", factor=17), "did not hold"),
    (claims.Check("a@0.1", "b@0.1", "params_trainable", "better"), "held"),  # lower is better
    (claims.Check("a@0.3", "b@0.1", "quality", "better"), "not measured"),  # no such row
])
def test_checks(check, verdict):
    claim = claims.Claim("c", "text", "t", "adapt", [check])
    assert evaluate(claim)[0].verdict == verdict


def test_noise_the_size_of_the_difference_is_inconclusive():
    """a's per-seed noise straddles b: the paired interval contains 0, so neither verdict."""
    claim = claims.Claim("c", "text", "t", "adapt", [claims.Check("a@0.1", "b@0.1")])
    (result,) = evaluate(claim, records(noise=(0.05, -0.04, 0.01)))
    check = result.checks[0]
    assert result.verdict == "inconclusive" and check.verdict.low < 0 < check.verdict.high
    assert 0.05 < check.verdict.p_value < 1 and check.verdict.n == 3


def test_two_seeds_are_inconclusive_even_when_the_gap_is_clear():
    recs = records().filter(pl.col("seed") < 2)
    (result,) = evaluate(claims.Claim("c", "text", "t", "adapt", [claims.Check("b@0.5", "a@0.1")]), recs)
    assert result.verdict == "inconclusive" and "2 shared seeds" in result.checks[0].verdict.reason


def test_lower_is_better_quality_direction():
    recs = records().with_columns(pl.lit(False).alias("higher_is_better"))
    claim = claims.Claim("c", "text", "t", None, [claims.Check("a@0.1", "b@0.1")])
    assert evaluate(claim, recs)[0].verdict == "held"  # 0.90 bits/byte beats 0.92


def test_the_parameter_mismatch_is_said_and_can_make_a_check_inconclusive():
    check = claims.Check("b@0.5", "a@0.1")
    (result,) = evaluate(claims.Claim("c", "text", "t", "adapt", [check]))
    assert result.checks[0].mismatch == pytest.approx(800 / 10 - 1)
    assert "params 800 vs 10 (+7900.0%)" in result.measured and result.verdict == "held"
    check.max_mismatch = 0.1
    (result,) = evaluate(claims.Claim("c", "text", "t", "adapt", [check]))
    assert result.verdict == "inconclusive" and "parameters differ" in result.checks[0].verdict.reason


def test_a_check_can_compare_rows_of_two_tasks():
    other = records().with_columns(pl.lit("u").alias("task"), pl.col("value") + 0.1)
    recs = pl.concat([records(), other])
    claim = claims.Claim("c", "text", "t", "adapt", [claims.Check("u/a@0.1", "a@0.1")])
    assert evaluate(claim, recs)[0].verdict == "held"


def test_claim_needs_every_check_and_renders():
    claim = claims.Claim("svfit", "beats lora with 16x fewer", "t", "adapt", [
        claims.Check("a@0.1", "b@0.1", "params_trainable", "fewer", factor=16),
        claims.Check("a@0.1", "b@0.1", "quality", "better")])
    (result,) = evaluate(claim)
    assert result.verdict == "did not hold" and "0.901 vs b@0.1 0.921" in result.measured
    md = claims.render_markdown([result])
    assert "| svfit | beats lora with 16x fewer |" in md and "did not hold" in md
    table = claims.to_frame([result])
    assert table["check_verdict"].to_list() == ["held", "did not hold"]
    assert table["p"][1] == 0.0 and table["n_seeds"].to_list() == [3, 3]  # a constant gap: p 0


SUITE = """
name = "c"
tasks = ["tiny"]
measure = ["params"]
[methods.fake-head]
[methods.dense]
kinds = ["adapt"]
[[claims]]
name = "head-vs-dense"
text = "training only the head is nearly as good as full fine-tuning"
task = "tiny"
kind = "adapt"
[[claims.checks]]
a = "fake-head"
b = "dense"
relation = "not_worse"
tolerance = 0.5
"""


def test_suite_claims_parse_and_errors(tmp_path, fake_plugins):
    reg = Registry.load()
    suite = load_suite(write_suite(tmp_path / "s.toml", SUITE), reg)
    assert suite.analyses["claims"][0]["checks"][0]["relation"] == "not_worse"
    with pytest.raises(SuiteError, match=r"s.toml:14: \[claims\] #1 checks #1 field 'a': 'lora@0.1' names no method "
                                         r"entry of the suite"):
        load_suite(write_suite(tmp_path / "s.toml", SUITE.replace('a = "fake-head"', 'a = "lora@0.1"')), reg)
    with pytest.raises(SuiteError, match=r"s.toml:16: \[claims\] #1 checks #1 field 'relation': Input should be "
                                         r"'better', 'not_worse' or 'fewer'"):
        load_suite(write_suite(tmp_path / "s.toml", SUITE.replace('"not_worse"', '"bigger"')), reg)


@pytest.mark.parametrize("change, message", [
    (("tolerance = 0.5", 'tolerance = "x"'), r"s.toml:17: \[claims\] #1 checks #1 field 'tolerance': Input should be a "
                                            r"valid number"),
    (("[[claims.checks]]\na = \"fake-head\"\nb = \"dense\"\nrelation = \"not_worse\"\ntolerance = 0.5\n", "checks = []\n"),
     r"\[claims\] #1 field 'checks': List should have at least 1 item"),
    (('task = "tiny"\nkind', 'task = "other"\nkind'), r"s.toml:11: \[claims\] #1 field 'task': task 'other' is not in"),
])
def test_bad_claims_are_refused_before_any_cell_runs(tmp_path, fake_plugins, change, message):
    """A claim with a wrong field type or no checks used to pass validation and fail after every cell."""
    reg = Registry.load()
    text = SUITE.replace(*change)
    assert text != SUITE
    with pytest.raises(SuiteError, match=message):
        load_suite(write_suite(tmp_path / "s.toml", text), reg)


@pytest.mark.slow
def test_run_writes_claims(tmp_path, fake_plugins, capsys):
    from lowdim_bench.cli import main
    suite = write_suite(tmp_path / "s.toml", SUITE)
    assert main(["run", str(suite), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 0
    run_dir = next((tmp_path / "r").iterdir())
    table = pl.read_csv(run_dir / "claims.csv")
    assert table["claim"].to_list() == ["head-vs-dense"]
    assert table["verdict"][0] == "inconclusive" and table["n_seeds"][0] == 1  # one seed decides nothing
    assert "## Claims" in (run_dir / "summary.md").read_text()
    assert "head-vs-dense" in capsys.readouterr().out
