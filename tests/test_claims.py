"""Paper claims: parsing from a suite, evaluation against a summary, and the run's claims.csv."""
import polars as pl
import pytest

from conftest import write_suite
from lowdim_bench import report
from lowdim_bench_builtin.analyses import claims
from lowdim_bench.registry import Registry
from lowdim_bench.suite import SuiteError, load_suite


def summary():
    rows = []
    for method, budget, q, p in (("a", 0.1, 0.90, 10), ("b", 0.1, 0.92, 160), ("b", 0.5, 0.95, 800)):
        rows += [{"task": "t", "kind": "adapt", "method": method, "budget": budget, "seed": 0, "metric": m,
                  "value": v, "unit": "u", "status": "ok", "cell_key": f"{method}{budget}",
                  "higher_is_better": True if m == "quality" else False}
                 for m, v in (("quality", q), ("params_trainable", p))]
    return report.summary(report.to_frame(rows))


@pytest.mark.parametrize("check, held", [
    (claims.Check("a@0.1", "b@0.1", "quality", "better"), False),
    (claims.Check("b@0.5", "a@0.1", "quality", "better"), True),
    (claims.Check("a@0.1", "b@0.1", "quality", "not_worse", tolerance=0.03), True),
    (claims.Check("a@0.1", "b@0.1", "quality", "not_worse", tolerance=0.01), False),
    (claims.Check("a@0.1", "b@0.1", "params_trainable", "fewer", factor=16), True),
    (claims.Check("a@0.1", "b@0.1", "params_trainable", "fewer", factor=17), False),
    (claims.Check("a@0.1", "b@0.1", "params_trainable", "better"), True),  # lower is better
    (claims.Check("a@0.3", "b@0.1", "quality", "better"), None),  # no such row
])
def test_checks(check, held):
    claim = claims.Claim("c", "text", "t", "adapt", [check])
    assert claims.evaluate(summary(), [claim])[0].held is held


def test_lower_is_better_quality_direction():
    s = summary().with_columns(pl.lit(False).alias("higher_is_better"))
    claim = claims.Claim("c", "text", "t", None, [claims.Check("a@0.1", "b@0.1")])
    assert claims.evaluate(s, [claim])[0].held is True  # 0.90 bits/byte beats 0.92


def test_claim_needs_every_check_and_renders():
    claim = claims.Claim("svfit", "beats lora with 16x fewer", "t", "adapt", [
        claims.Check("a@0.1", "b@0.1", "params_trainable", "fewer", factor=16),
        claims.Check("a@0.1", "b@0.1", "quality", "better")])
    (result,) = claims.evaluate(summary(), [claim])
    assert result.held is False and "0.9 vs b@0.1 0.92" in result.measured
    assert "| svfit | beats lora with 16x fewer |" in claims.render_markdown([result])
    assert "did not hold" in claims.render_markdown([result])


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
    assert table["claim"].to_list() == ["head-vs-dense"] and table["verdict"][0] in ("held", "did not hold")
    assert "## Claims" in (run_dir / "summary.md").read_text()
    assert "head-vs-dense" in capsys.readouterr().out
