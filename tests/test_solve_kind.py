"""The solve kind in the harness: registration, suites and plans, the solve cell's records, the
summary and gate around series records, trace curves for the app, and a run through the CLI."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import polars as pl
import pytest
import torch

from conftest import write_suite
from lowdim_bench import api, report
from lowdim_bench.core import events as ev
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.plan import make_plan
from lowdim_bench.registry import Registry
from lowdim_bench.run import worker
from lowdim_bench.suite import SuiteError
from lowdim_bench.tui import traces

MC = 'task = "matrix-completion"\nm = 60\nn = 50\nrank = 3\np = 0.4\n'
SUITE = f"""
name = "solve"
seeds = [0, 1]
[tasks.tiny]
[tasks.mc]
{MC}
[tasks.lp]
task = "lp-regression"
rows = 300
d = 4
directions = 8
[methods.altmin]
knobs = [3]
rounds = 4
[methods.softimpute]
budgets = [0.1]
rounds = 5
[methods.uniform]
knobs = [30]
[methods.fake-head]
"""

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def registry():
    import os
    import sys

    old = os.environ.get("LOWDIM_BENCH_PLUGIN_MODULES")
    os.environ["LOWDIM_BENCH_PLUGIN_MODULES"] = "fakeplugins"
    sys.path.insert(0, str(TESTS))
    try:
        yield Registry.load(strict=True)
    finally:
        sys.path.remove(str(TESTS))
        if old is None:
            os.environ.pop("LOWDIM_BENCH_PLUGIN_MODULES")
        else:
            os.environ["LOWDIM_BENCH_PLUGIN_MODULES"] = old


# ---- registration -------------------------------------------------------------------------------
class _Plugin:
    def __init__(self, *classes):
        self.classes = classes

    @hookimpl
    def register_methods(self, register):
        for c in self.classes:
            register(c)


def _solver(**attrs):
    base = {"name": "s", "problem": "matrix-completion", "description": "d",
            "params": {"steps": api.Param(3, int, low=1, help="steps")}}
    return type("S", (api.Solver,), {**base, **attrs})


def test_registry_checks_the_solver_contract():
    no_problem = _solver(problem="")
    bad_grid = _solver(name="t", tune={"steps": [2, 0]})
    unknown = _solver(name="u", tune={"lr": [1.0]})
    neural_solve = type("N", (api.Method,), {"name": "n", "kind": "solve"})
    reg = Registry.from_objects({"a": _Plugin(no_problem), "b": _Plugin(bad_grid), "c": _Plugin(unknown),
                                 "d": _Plugin(neural_solve), "ok": _Plugin(_solver(name="fine", tune={"steps": [1, 5]}))})
    errors = {p.name: p.error for p in reg.broken}
    assert "has no `problem`" in errors["a"]
    assert "steps = 0 is outside [1, inf]" in errors["b"]
    assert "`tune` names 'lr'" in errors["c"]
    assert "for api.Solver subclasses" in errors["d"]
    assert "fine" in reg.methods and reg.methods["fine"].cls.supported_kinds() == ("solve",)


def test_builtin_solvers_and_problems_are_registered(registry):
    solvers = {n for n, p in registry.methods.items() if issubclass(p.cls, api.Solver)}
    assert {"altmin", "altmin-fast", "softimpute", "pomega-svd", "uniform", "leverage", "root-leverage", "lewis",
            "lp-sensitivity", "quickselection", "dense-ae", "variance", "laplacian-score"} == solvers
    for n in solvers:
        cls = registry.methods[n].cls
        assert issubclass(registry.task(cls.problem).cls, api.Problem)
        assert cls.knob is registry.task(cls.problem).cls.size  # the solver's knob is its problem's size


# ---- suites and plans ---------------------------------------------------------------------------
def test_solvers_pair_with_their_own_problem_only(tmp_path, registry):
    plan = make_plan(write_suite(tmp_path / "s.toml", SUITE), registry)
    pairs = {(c.shown_task, c.method, c.kind) for c in plan.cells}
    assert pairs == {("mc", "altmin", "solve"), ("mc", "softimpute", "solve"), ("lp", "uniform", "solve"),
                     ("tiny", "fake-head", "adapt")}
    solve = [c for c in plan.cells if c.kind == "solve"]
    assert all(c.measure == [] and c.recipe == {} and c.lr_grid == [] for c in solve)
    assert {c.knob for c in solve if c.method == "altmin"} == {3.0}
    assert {c.budget for c in solve if c.method == "softimpute"} == {0.1}


@pytest.mark.parametrize("body, message", [
    ('name = "x"\ntasks = ["tiny"]\n[methods.altmin]\nknobs = [3]\n',
     r"s.toml:3: \[methods.altmin\]: solver 'altmin' solves problem 'matrix-completion', which is not among the "
     r"tasks it would run on \(tiny\)"),
    (f'name = "x"\n[tasks.mc]\n{MC}[methods.fake-head]\n',
     r"\[methods.fake-head\]: method 'fake-head' needs a task with a model"),
    (f'name = "x"\n[tasks.mc]\n{MC}[methods.altmin]\nknobs = [2.5]\n', r"knob 'rank' takes integers"),
    (f'name = "x"\n[tasks.mc]\n{MC}[methods.altmin]\nrounds = 0\n', r"field 'rounds': method 'altmin': rounds = 0"),
    (f'name = "x"\n[tasks.mc]\n{MC.replace("0.4", "2.0")}[methods.altmin]\n',
     r"s.toml:7: \[tasks.mc\] field 'p': problem 'matrix-completion': p = 2.0 is outside \[1e-06, 1\]"),
])
def test_bad_solve_suites_name_the_line(tmp_path, registry, body, message):
    with pytest.raises(SuiteError, match=message):
        make_plan(write_suite(tmp_path / "s.toml", body), registry)


# ---- one solve cell, in process -----------------------------------------------------------------
def run_cell(registry, tmp_path, body: str, **match):
    plan = make_plan(write_suite(tmp_path / "s.toml", body), registry)
    cell = next(c for c in plan.cells if all(getattr(c, k) == v for k, v in match.items()))
    events: list = []
    worker.execute(cell, "run", events.append, registry)
    failed = [e for e in events if isinstance(e, ev.CellFailed)]
    assert not failed, failed[0].reason + failed[0].traceback
    recs = [r for e in events if isinstance(e, ev.RecordsReady) for r in e.records]
    return cell, recs, [e for e in events if isinstance(e, ev.Progress)]


def _one(recs, metric, phase=None):
    hits = [r for r in recs if r["metric"] == metric and r["phase"] == phase and r["step"] is None]
    assert len(hits) == 1, (metric, phase, len(hits))
    return hits[0]


def test_a_solve_cell_records_scores_costs_and_its_trace(tmp_path, registry):
    torch.set_num_threads(1)
    _, recs, progress = run_cell(registry, tmp_path, SUITE, method="altmin", seed=0)
    q = _one(recs, "quality")
    assert q["value"] == _one(recs, "rel_error")["value"] < 0.05 and q["higher_is_better"] is False
    assert q["kind"] == "solve" and q["knob"] == 3 and q["budget_reached"] == pytest.approx(3 / 50)
    assert _one(recs, "instance_observed")["value"] > 0
    for metric, phase in [("wall_seconds", None), ("seconds_per_round", None), ("memory_peak", "solve"),
                          ("flops_round", None), ("flops_total", None)]:
        r = _one(recs, metric, phase)
        assert r["value"] > 0 and r["higher_is_better"] is False, metric
    peak = _one(recs, "memory_peak", "solve")["value"]
    assert peak == _one(recs, "memory_tensors_peak", "solve")["value"] + _one(recs, "memory_python_peak", "solve")["value"]
    err = sorted((r["step"], r["value"]) for r in recs if r["metric"] == "trace_rel_error")
    assert [s for s, _ in err] == [0, 1, 2, 3, 4] and err[-1][1] == pytest.approx(q["value"])
    assert err[-1][1] < err[0][1]
    secs = [r["value"] for r in sorted((r for r in recs if r["metric"] == "trace_seconds"), key=lambda r: r["step"])]
    assert secs == sorted(secs)
    assert [p.step for p in progress if p.stage == "solve"] == [0, 1, 2, 3, 4]
    assert not [r for r in recs if r["metric"] in ("tuned", "quality_val")]  # altmin declares no tune grid
    config = json.loads(q["config"])
    assert config["size"] == {"name": "rank", "value": 3, "range": [1, 50]} and config["hparams"]["rounds"] == 4


def test_a_budget_is_a_fraction_of_the_largest_size_and_tuning_uses_val(tmp_path, registry):
    torch.set_num_threads(1)
    _, recs, _ = run_cell(registry, tmp_path, SUITE, method="softimpute", seed=1)
    q = _one(recs, "quality")
    assert q["budget"] == 0.1 and q["knob"] == 5 and q["budget_reached"] == 0.1  # round(0.1 * 50)
    config = json.loads(q["config"])
    grid = config["tune"]["grid"]["lam_frac"]
    assert len(config["tune"]["scores"]) == len(grid) == 3
    best = min(config["tune"]["scores"])
    assert _one(recs, "quality_val")["value"] == best
    chosen = _one(recs, "tuned", "lam_frac")["value"]
    assert chosen == grid[config["tune"]["scores"].index(best)] == config["hparams"]["lam_frac"]


def test_a_setting_the_suite_fixes_is_not_tuned(tmp_path, registry):
    body = SUITE.replace("rounds = 5\n", "rounds = 5\nlam_frac = 0.01\n")
    _, recs, _ = run_cell(registry, tmp_path, body, method="softimpute", seed=0)
    assert not [r for r in recs if r["metric"] in ("tuned", "quality_val", "tune_seconds")]
    assert json.loads(_one(recs, "quality")["config"])["hparams"]["lam_frac"] == 0.01


def test_a_size_outside_the_instance_fails_the_cell_clearly(tmp_path, registry):
    plan = make_plan(write_suite(tmp_path / "s.toml", SUITE.replace("knobs = [3]", "knobs = [80]")), registry)
    cell = next(c for c in plan.cells if c.method == "altmin")
    events: list = []
    worker.execute(cell, "run", events.append, registry)
    (fail,) = [e for e in events if isinstance(e, ev.CellFailed)]
    assert "rank = 80 is outside [1, 50]" in fail.reason


# ---- series records: out of the summary and the gate, into curves -------------------------------
def _rec(metric, value, seed=0, step=None, method="altmin"):
    base = {"task": "mc", "kind": "solve", "method": method, "knob": 3.0, "budget": None, "seed": seed,
            "cell_key": f"{method}{seed}", "status": "ok", "unit": "", "higher_is_better": False}
    return {**base, "metric": metric, "value": value, "step": step}


def test_series_stay_out_of_the_summary_and_the_gate():
    from lowdim_bench import gate

    rows = [_rec("quality", 0.5)] + [_rec("trace_rel_error", 10.0 * i, step=i) for i in range(3)]
    s = report.summary(report.to_frame(rows))
    assert "trace_rel_error" not in s.columns and s["quality"].to_list() == [0.5]
    table = gate.per_seed_table(report.to_frame(rows))
    assert table["column"].to_list() == ["quality"]


def test_trace_curves_against_steps_and_seconds():
    rows = []
    for seed in (0, 1):
        for i in range(3):
            rows += [_rec("trace_rel_error", 10.0 ** -i, seed, i), _rec("trace_seconds", 0.5 * (i + 1), seed, i)]
    rows.append(_rec("trace_rel_error", math.nan, 1, 3))
    assert traces.traced_values(rows) == ["rel_error"]
    by_step = traces.curves(rows)
    assert [c.label for c in by_step] == ["altmin knob 3 seed 0", "altmin knob 3 seed 1"]
    assert by_step[0].x == [0, 1, 2] and by_step[0].y == [1.0, 0.1, 0.01]
    assert len(by_step[1].x) == 3  # the NaN point is left out
    by_time = traces.curves(rows, against="seconds")
    assert by_time[0].x == [0.5, 1.0, 1.5]
    with pytest.raises(ValueError, match="against"):
        traces.curves(rows, against="rounds")


def test_the_app_trace_chart_follows_the_selected_solve_task():
    from lowdim_bench.tui.table import Row

    recs = {}
    for method, start in (("altmin", 1.0), ("softimpute", 0.5)):
        group = ("mc", "solve", method, "knob 3")
        recs[group] = [_rec("rel_error", start / 1000, 0, method=method)]
        recs[group] += [_rec("trace_rel_error", start * 10.0 ** -i, 0, i, method) for i in range(4)]
        recs[group] += [_rec("trace_seconds", 0.1 * (i + 1), 0, i, method) for i in range(4)]
        recs[group] += [_rec("trace_loss", 5.0, 0, i, method) for i in range(4)]
    rows = [Row(g, {}, [], False, 0) for g in recs]
    neural = Row(("digits", "train", "lora", "0.1"), {}, [], False, 0)
    assert traces.trace_view([neural], neural, {}) is None  # no solve rows: the chart says so
    view = traces.trace_view([neural] + rows, neural, recs)  # a neural row selected: the first solve task
    assert view.task == "mc" and view.value == "rel_error"  # the scored value, not the solver's loss
    assert [c.method for c in view.curves] == ["altmin", "softimpute"] and view.log_y
    assert view.curves[1].y == [0.5, 0.05, 0.005, 0.0005]
    by_time = traces.trace_view(rows, rows[1], recs, against="seconds")
    assert by_time.curves[0].x == pytest.approx([0.1, 0.2, 0.3, 0.4])
    sampler = Row(("lp1", "solve", "uniform", "knob 100"), {}, [], False, 0)  # a solve row that traced nothing
    recs[sampler.group] = [_rec("rel_error", 0.4, 0, method="uniform")]
    assert traces.trace_view([sampler] + rows, sampler, recs).task == "mc"  # the first task that traced


# ---- through the CLI ------------------------------------------------------------------------------
E2E = textwrap.dedent("""
    name = "solve-e2e"
    seeds = [0, 1, 2]
    [tasks.mc-a]
    task = "matrix-completion"
    m = 60
    n = 60
    rank = 2
    p = 0.3
    [tasks.mc-b]
    task = "matrix-completion"
    m = 60
    n = 60
    rank = 2
    p = 0.5
    [tasks.mc-c]
    task = "matrix-completion"
    m = 60
    n = 60
    rank = 2
    p = 0.8
    [methods.altmin-fast]
    knobs = [2]
    rounds = 3
    [methods.pomega-svd]
    knobs = [2]
    tasks = ["mc-c"]  # the claim's only; 12 cells in all (each a process: keep CI lean)
    [[scaling]]
    name = "work"
    x = "instance_observed"
    y = "flops_round_omega"
    methods = ["altmin-fast"]
    [[scaling.checks]]
    a = "altmin-fast"
    relation = "exponent_near"
    value = 1.0
    tolerance = 0.2
    [[claims]]
    name = "altmin beats its start"
    text = "alternating rounds improve on the spectral start"
    task = "mc-c"
    [[claims.checks]]
    a = "altmin-fast@knob 2"
    b = "pomega-svd@knob 2"
""")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_solve_suite_runs_through_the_cli(tmp_path):
    from lowdim_bench.cli import main

    path = write_suite(tmp_path / "s.toml", E2E)
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--device", "cpu", "--jobs", "2"]) == 0
    run_dir = next((tmp_path / "r").iterdir())
    df = pl.read_parquet(run_dir / "records.parquet")
    assert df.filter(pl.col("status") == "failed").is_empty()
    assert set(df.filter(pl.col("metric") == "quality")["kind"].to_list()) == {"solve"}
    assert df.filter(pl.col("metric") == "trace_rel_error")["step"].null_count() == 0
    claims = pl.read_csv(run_dir / "claims.csv")
    assert claims["verdict"].to_list() == ["held"]
    scaling = pl.read_csv(run_dir / "scaling.csv")
    fit = scaling.filter(pl.col("what") == "exponent").to_dicts()[0]
    assert fit["seeds"] == 3 and fit["sizes"] == 3
    # the |Omega| part of robust AltMin's declared FLOPs per round is linear in |Omega| at fixed k (the
    # whole round is not at 60 x 60: its per-row k^2 and k^3 terms are a large share there)
    assert abs(fit["exponent"] - 1.0) < 0.05
    assert scaling.filter(pl.col("what") == "check")["verdict"].to_list() == ["held"]
    summary = (run_dir / "summary.md").read_text()
    assert "Solve rows" in summary and "## Scaling" in summary
    assert main(["compare", str(run_dir), str(run_dir)]) == 0  # the gate reads solve runs too
