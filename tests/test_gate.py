"""The regression gate on hand-made records: tolerances, directions, noise rules, outputs, CLI
exit codes; and once end to end on real runs of a fixture suite (tests/gate_fixtures.py)."""
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest

from conftest import write_suite
from lowdim_bench import gate, gate_render, report
from lowdim_bench.cli import main

INTER, CELL = "inference_interleaved", "inference"


def cell(method, seed=0, *, quality=0.9, flops=1000.0, mem=1e6, lat=None, budget=None, kind="adapt",
         hib=True, status="ok", error=None, run="r"):
    """Records of one cell; lat: {phase: (p50 seconds, p90/p50 spread)} at batch size 1."""
    base = {"run_id": run, "task": "t", "kind": kind, "method": method, "budget": budget, "seed": seed,
            "status": status, "cell_key": f"{method}{seed}{budget}", "error": error, "reference": method == "dense"}
    if status != "ok":
        return [{**base, "metric": "error", "value": math.nan}]
    out = [{**base, "metric": "quality", "value": quality, "higher_is_better": hib},
           {**base, "metric": "flops_forward", "value": flops, "higher_is_better": False},
           {**base, "metric": "flops_forward.body", "value": flops, "higher_is_better": False},
           {**base, "metric": "memory_peak", "phase": "train_step", "batch_size": 64, "value": mem,
            "higher_is_better": False}]
    lat = {CELL: (1e-4, 1.05), INTER: (1e-4, 1.05)} if lat is None else lat
    for phase, (p50, spread) in lat.items():
        for metric, v in (("latency_p50", p50), ("latency_p90", p50 * spread), ("latency_spread", spread)):
            out.append({**base, "metric": metric, "phase": phase, "batch_size": 1, "value": v,
                        "higher_is_better": False})
    return out


def run(*cells):
    return report.to_frame([r for c in cells for r in c])


def baseline(seeds=(0,), **m):
    return run(*(cell("dense", s) for s in seeds), *(cell("m", s, budget=0.1, **m) for s in seeds))


def by(res, method, column):
    return next(c for c in res.checks if c.row[2] == method and c.column == column)


# ---- the spec --------------------------------------------------------------------------------------
def test_parse_spec_signs_units_default_and_off():
    tols = {t.selector: t for t in gate.parse_spec("default,latency_p50:off,quality:0.02,params_stored:+0%")}
    assert set(tols) == {"quality", "memory_peak", "flops", "params_stored"}
    assert (tols["quality"].limit, tols["quality"].relative) == (0.02, False)
    assert (tols["memory_peak"].limit, tols["memory_peak"].relative) == (0.05, True)
    assert gate.parse_spec("none") == [] and len(gate.parse_spec(gate.DEFAULT_SPEC)) == 4


@pytest.mark.parametrize("bad", ["quality", "quality:-x%", "quality:1%%", ":1%", "quality:-1%;flops:0", " , "])
def test_parse_spec_rejects_and_names_the_entry(bad):
    with pytest.raises(gate.GateSpecError) as e:
        gate.parse_spec(bad)
    assert "--fail-on" in str(e.value)


def test_selectors_metric_phase_batch_size_and_family():
    metrics = {"latency_p50", "flops_forward", "flops_forward.body", "quality", "quality_val"}
    t = lambda spec: gate.parse_spec(spec)[0]
    cols = ["latency_p50[inference]@bs1", "latency_p50[inference_interleaved]@bs1", "latency_p50[train_step]@bs64"]
    assert all(gate.selects(t("latency_p50:+10%"), c, metrics) for c in cols)
    assert [gate.selects(t("latency_p50[inference]:+10%"), c, metrics) for c in cols] == [True, False, False]
    assert gate.selects(t("latency_p50[train_step]@bs64:+10%"), cols[2], metrics)
    assert gate.selects(t("flops:+0%"), "flops_forward", metrics)
    assert not gate.selects(t("flops:+0%"), "flops_forward.body", metrics)  # per-module breakdown
    assert not gate.selects(t("quality:-1%"), "quality_val", metrics)


# ---- exact metrics ---------------------------------------------------------------------------------
def test_identical_runs_pass():
    res = gate.evaluate(baseline(), baseline())
    assert res.passed and not [c for c in res.checks if c.status == gate.WARN]
    assert {c.column for c in res.checks} >= {"quality", "flops_forward", "memory_peak[train_step]@bs64",
                                              "latency_p50[inference_interleaved]@bs1"}


def test_flops_any_increase_fails_and_a_decrease_passes():
    res = gate.evaluate(baseline(), baseline(flops=1001.0))
    c = by(res, "m", "flops_forward")
    assert c.status == gate.FAIL and "1000 -> 1001" in c.reason and "+0.10%" in c.reason
    assert gate.evaluate(baseline(), baseline(flops=900.0)).passed


def test_memory_within_and_beyond_five_percent():
    assert gate.evaluate(baseline(), baseline(mem=1.04e6)).passed
    res = gate.evaluate(baseline(), baseline(mem=1.06e6))
    assert by(res, "m", "memory_peak[train_step]@bs64").status == gate.FAIL and not res.passed


# ---- quality: direction and seeds ------------------------------------------------------------------
def test_quality_one_seed_tolerance_only():
    assert gate.evaluate(baseline(), baseline(quality=0.895)).passed  # -0.56%
    res = gate.evaluate(baseline(), baseline(quality=0.88))  # -2.2%
    c = by(res, "m", "quality")
    assert c.status == gate.FAIL and "0.9 -> 0.88" in c.reason and "1 seed: tolerance only" in c.reason
    assert any("tolerance alone" in n for n in res.notes)


def test_quality_direction_comes_from_the_task():
    # bits/byte: lower is better; the same `quality:-1%` fails a rise and passes a fall
    bpb = lambda q: run(cell("dense", quality=2.0, hib=False), cell("m", budget=0.1, quality=q, hib=False))
    res = gate.evaluate(bpb(2.0), bpb(2.1))
    assert by(res, "m", "quality").status == gate.FAIL and "2 -> 2.1 (+5.00%, tolerance -1%)" in by(res, "m", "quality").reason
    assert gate.evaluate(bpb(2.0), bpb(1.5)).passed
    assert gate.evaluate(baseline(), baseline(quality=0.99)).passed  # accuracy up


def test_quality_over_seeds_needs_significance():
    seeds = (0, 1, 2)
    a = run(*(cell("m", s, quality=q) for s, q in zip(seeds, (0.90, 0.80, 0.85))))
    steady = run(*(cell("m", s, quality=q) for s, q in zip(seeds, (0.85, 0.76, 0.80))))
    res = gate.evaluate(a, steady)
    c = by(res, "m", "quality")
    assert c.status == gate.FAIL and c.seeds == 3 and "paired t" in c.reason and c.p_value < 0.05
    noisy = run(*(cell("m", s, quality=q) for s, q in zip(seeds, (0.95, 0.60, 0.86))))
    res = gate.evaluate(a, noisy)
    c = by(res, "m", "quality")
    assert c.status == gate.WARN and res.passed and "not significant over 3 seeds" in c.reason


def test_means_are_over_the_seeds_both_runs_have():
    a = run(*(cell("m", s, quality=q) for s, q in ((0, 0.9), (1, 0.5), (2, 0.5))))
    b = run(cell("m", 0, quality=0.9))  # a one-seed rerun of seed 0: the same figure
    c = by(gate.evaluate(a, b), "m", "quality")
    assert c.status == gate.PASS and c.base == 0.9 and c.seeds == 1


# ---- latency -------------------------------------------------------------------------------------------
def test_a_machine_slower_as_a_whole_passes():
    slow = {CELL: (3e-4, 1.05), INTER: (3e-4, 1.05)}
    new = run(cell("dense", lat=slow), cell("m", budget=0.1, lat=slow))
    res = gate.evaluate(baseline(), new)
    assert res.passed and not [c for c in res.checks if c.status == gate.WARN]
    ref = by(res, "dense", "latency_p50[inference_interleaved]@bs1")
    assert ref.status == gate.SKIP and "reference" in ref.reason


def test_interleaved_latency_one_seed_fails_beyond_its_noise_band():
    res = gate.evaluate(baseline(), baseline(lat={CELL: (2e-4, 1.05), INTER: (2e-4, 1.05)}))
    c = by(res, "m", "latency_p50[inference_interleaved]@bs1")
    assert c.status == gate.FAIL and "(x reference) 1 -> 2 (+100.00%" in c.reason and "noise band x1.5 " in c.reason
    per_cell = by(res, "m", "latency_p50[inference]@bs1")
    assert per_cell.status == gate.WARN and "not gated: 1 seed" in per_cell.reason
    # below the floor: +40% with steady calls is still noise for one seed
    res = gate.evaluate(baseline(), baseline(lat={CELL: (1e-4, 1.05), INTER: (1.4e-4, 1.05)}))
    assert by(res, "m", "latency_p50[inference_interleaved]@bs1").status == gate.WARN and res.passed
    # the same doubling inside a per-call spread of 2.5 is not distinguishable
    res = gate.evaluate(baseline(), baseline(lat={CELL: (2e-4, 2.5), INTER: (2e-4, 2.5)}))
    assert res.passed and by(res, "m", "latency_p50[inference_interleaved]@bs1").status == gate.WARN


def test_latency_over_seeds_uses_a_paired_test():
    seeds = (0, 1, 2)
    a = baseline(seeds)
    new = run(*(cell("dense", s) for s in seeds),
              *(cell("m", s, budget=0.1, lat={CELL: (1e-4 * f, 3.0)}) for s, f in zip(seeds, (1.9, 2.0, 2.1))))
    c = by(gate.evaluate(a, new), "m", "latency_p50[inference]@bs1")
    assert c.status == gate.FAIL and c.seeds == 3 and "significant over 3 seeds" in c.reason


def test_latency_without_a_dense_reference_is_gated_in_seconds():
    a = run(cell("m", budget=0.1))
    b = run(cell("m", budget=0.1, lat={CELL: (1e-4, 1.05), INTER: (2e-4, 1.05)}))
    res = gate.evaluate(a, b)
    c = by(res, "m", "latency_p50[inference_interleaved]@bs1")
    assert c.status == gate.FAIL and "(x dense)" not in c.reason
    assert any("gated in seconds" in n for n in res.notes)


# ---- rows ---------------------------------------------------------------------------------------------
def test_missing_failed_and_new_rows():
    a = run(cell("dense"), cell("m", budget=0.1), cell("gone", budget=0.1))
    b = run(cell("dense"), cell("m", budget=0.1, status="failed", error="RuntimeError: boom\ntraceback"),
            cell("fresh", budget=0.1))
    res = gate.evaluate(a, b)
    assert by(res, "gone", "cells").status == gate.FAIL and "missing from NEW" in by(res, "gone", "cells").reason
    assert by(res, "m", "cells").reason == "failed in NEW: RuntimeError: boom"
    assert by(res, "fresh", "cells").status == gate.SKIP
    assert [c.status for c in res.checks][:2] == [gate.FAIL, gate.FAIL]  # failures first


def test_a_tolerance_naming_no_metric_is_noted():
    res = gate.evaluate(baseline(), baseline(), "quality:-1%,latency_p95:+5%")
    assert any("latency_p95:+5%: no such metric" in n for n in res.notes)


# ---- output -------------------------------------------------------------------------------------------
def test_outputs_table_markdown_junit():
    res = gate.evaluate(baseline(), baseline(quality=0.5, flops=2000.0))
    table = gate_render.render_table(res)
    assert table.splitlines()[0].split()[:3] == ["status", "task", "kind"]
    assert table.rstrip().endswith("gate FAILED: 8 checks, 2 regressions")
    md = gate_render.render_markdown(res)
    assert md.startswith("### lowdim-bench gate: FAILED") and "| FAIL | t | adapt | m | 0.1 | quality |" in md
    root = ET.fromstring(gate_render.render_junit(res).split("\n", 1)[1])
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(res.checks) and suite.get("failures") == "2"
    fail = next(c for c in cases if c.find("failure") is not None and c.get("name") == "quality")
    assert fail.get("classname") == "lowdim_bench.gate.t.adapt.m.0_1"
    assert "0.9 -> 0.5" in fail.find("failure").get("message") and "base=0.9 new=0.5" in fail.find("failure").text
    assert json.loads(json.dumps(gate_render.to_dicts(res)))["passed"] is False


def test_interleaved_phase_name_matches_the_runner():
    from lowdim_bench.run import interleave

    assert interleave.PHASE in gate.INTERLEAVED_PHASES


# ---- CLI ----------------------------------------------------------------------------------------------
def _run_dir(path: Path, frame: pl.DataFrame) -> Path:
    path.mkdir(parents=True)
    (path / "run.json").write_text('{"status": "finished", "cells": []}')
    frame.write_parquet(path / "records.parquet")
    return path


def test_cli_exit_codes_formats_and_out_file(tmp_path, capsys):
    a = _run_dir(tmp_path / "a", baseline())
    same = _run_dir(tmp_path / "same", baseline())
    worse = _run_dir(tmp_path / "worse", baseline(quality=0.5))
    assert main(["compare", str(a), str(same)]) == 0
    assert "gate PASSED" in capsys.readouterr().out
    out = tmp_path / "ci" / "gate.xml"
    assert main(["compare", str(a), str(worse), "--format", "junit", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "gate FAILED" in printed and ET.parse(out).getroot().tag == "testsuites"
    assert main(["compare", str(a), str(worse), "--fail-on", "flops:+0%"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(worse), "--format", "markdown"]) == 1
    assert capsys.readouterr().out.startswith("### lowdim-bench gate: FAILED")
    assert main(["compare", str(a), str(worse), "--fail-on", "quality:minus"]) == 2
    assert "quality:minus" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2


# ---- end to end, real runs -------------------------------------------------------------------------------
SUITE = """
name = "gatefx"
seeds = [0]
measure = ["params", "flops", "latency", "memory"]
timeout_s = 120
tasks = ["tiny"]
[protocol]
batch_sizes = [16]
repeats = 40
warmup = 5
max_seconds = 0.5
memory_batch_size = 16
train_batch_size = 16
roofline = false
[methods.dense]
kinds = ["adapt"]
[methods.fast]
method = "{fast}"
{factor}
[methods.good]
method = "{good}"
"""


@pytest.mark.slow
@pytest.mark.timeout(900)  # three real runs: about 45 s on two idle cores, minutes when they are shared
def test_gate_on_real_runs(tmp_path, fake_plugins, monkeypatch):
    """Two runs with identical code pass; a slowed and a degraded method fail, each with its reason."""
    monkeypatch.setenv("LOWDIM_BENCH_PLUGIN_MODULES", "fakeplugins,gate_fixtures")
    env = {**os.environ}

    def lowdim(*args):
        return subprocess.run([sys.executable, "-m", "lowdim_bench.cli", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path)

    runs = {}
    for name, fast, good, factor in (("base", "gate-ok", "gate-ok", ""), ("same", "gate-ok", "gate-ok", ""),
                                     ("worse", "gate-slow", "gate-degraded", "factor = 4.0")):
        suite = write_suite(tmp_path / f"{name}.toml", SUITE.format(fast=fast, good=good, factor=factor))
        r = lowdim("run", str(suite), "--jobs", "2", "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        runs[name] = next((tmp_path / name).iterdir())
    same = lowdim("compare", str(runs["base"]), str(runs["same"]))
    assert same.returncode == 0, same.stdout
    worse = lowdim("compare", str(runs["base"]), str(runs["worse"]), "--format", "junit", "--out", "gate.xml")
    assert worse.returncode == 1, worse.stdout
    failed = {(c.get("classname").rsplit(".", 2)[-2], c.get("name")): c.find("failure").get("message")
              for c in ET.parse(tmp_path / "gate.xml").getroot().iter("testcase") if c.find("failure") is not None}
    assert "quality" in failed.pop(("good", "quality"))
    assert "noise band" in failed.pop(("fast", "latency_p50[inference_interleaved]@bs16"))
    assert not failed, failed  # nothing else regressed: same FLOPs, memory, parameters
