"""The runner end to end with real worker processes: failures stay in their cells, records land
on disk as cells finish, a killed run resumes without redoing finished cells."""
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from conftest import write_suite
from lowdim_bench import report
from lowdim_bench.registry import Registry
from lowdim_bench.core import events as ev
from lowdim_bench.run.runner import run_cells
from lowdim_bench.plan import expand
from lowdim_bench.suite import load_suite

pytestmark = pytest.mark.slow

FAILING = """
name = "failing"
seeds = [0]
measure = ["params", "flops", "latency", "memory"]
timeout_s = 120
tasks = ["tiny"]
[protocol]
batch_sizes = [4]
repeats = 3
warmup = 1
max_seconds = 0.2
memory_batch_size = 8
train_batch_size = 8
[methods.fake-head]
[methods.fake-boom]
[methods.fake-nan]
[methods.fake-die]
[methods.fake-oom]
[methods.fake-mutator]
[methods.fake-hang]
timeout_s = 8
"""


def _run(tmp_path, body, **kw):
    reg = Registry.load()
    suite = load_suite(write_suite(tmp_path / "s.toml", body), reg)
    seen = []
    res = run_cells(expand(suite, reg), {"name": suite.name, "version": suite.version}, reg,
                    out_dir=tmp_path / "reports", listeners=[seen.append], **kw)
    return res, seen


def test_each_failure_becomes_a_failed_record_and_the_rest_finishes(tmp_path, fake_plugins):
    res, seen = _run(tmp_path, FAILING, jobs=2)
    assert (res.ok, res.failed) == (1, 6)
    df = pl.read_parquet(res.run_dir / "records.parquet")
    assert set(report.SCHEMA) <= set(df.columns)
    errors = {r["method"]: r["error"] for r in df.filter(pl.col("status") == "failed").to_dicts()}
    assert "boom on purpose" in errors["fake-boom"] and "Traceback" in errors["fake-boom"]
    assert errors["fake-nan"].startswith("non-finite loss: loss became nan at step 0")
    assert "killed by SIGKILL" in errors["fake-die"]
    assert errors["fake-oom"].startswith("out of memory: MemoryError: could not allocate 1 TiB")
    assert "mutated the base model" in errors["fake-mutator"]
    assert errors["fake-hang"].startswith("time limit of 8 s exceeded")
    ok = df.filter(pl.col("method") == "fake-head")
    metrics = set(ok["metric"])
    assert {"quality", "params_trainable", "flops_forward", "latency_p50", "memory_peak"} <= metrics
    head = ok.row(by_predicate=pl.col("metric") == "params_trainable", named=True)
    assert head["value"] == 16 * 3 + 3  # only the last Linear trains
    assert head["plugin"] == "fakeplugins" and head["device"] == "cpu" and head["torch_version"]
    kinds = [type(e) for e in seen]
    assert kinds[0] is ev.RunStarted and kinds[-1] is ev.RunFinished
    assert sum(k is ev.CellFailed for k in kinds) == 6 and ev.Progress in kinds and ev.RecordsReady in kinds
    s = report.summary(df)
    assert s.filter(pl.col("method") == "fake-boom")["n_failed"].to_list() == [1]
    assert (res.run_dir / "summary.md").read_text().count("fake-head") == 1


def test_budget_match_takes_the_closer_knob(tmp_path, fake_plugins):
    """Budgets are matched from both sides (run/budget.py): the knob whose count is closest to the
    budget, so a cell may sit above its budget by less than half a knob step, and says by how much."""
    body = ('name = "b"\nseeds = [0]\nmeasure = ["params"]\ntasks = ["tiny"]\nbudgets = [0.3, 0.6]\n'
            '[methods.fake-width]\n')
    res, _ = _run(tmp_path, body)
    df = pl.read_parquet(res.run_dir / "records.parquet").filter(pl.col("metric") == "params_stored")
    dense = 8 * 16 + 16 + 16 * 3 + 3
    for r in df.to_dicts():
        width = r["knob"]
        assert r["value"] == width * (8 + 1 + 3) + 3  # counted on the applied model
        assert r["budget_reached"] == pytest.approx(r["value"] / dense)
        target = r["budget"] * dense
        for other in (width - 1, width + 1):  # neither neighbour is closer to the budget
            assert abs(r["value"] - target) <= abs(other * 12 + 3 - target)


def test_kill_minus_nine_then_resume_runs_every_cell_exactly_once(tmp_path, fake_plugins):
    suite = write_suite(tmp_path / "s.toml", 'name = "k"\nseeds = [0, 1, 2, 3]\nmeasure = ["params"]\n'
                        'tasks = ["tiny"]\n[methods.fake-slow]\n')
    out = tmp_path / "reports"
    cmd = [sys.executable, "-m", "lowdim_bench.cli", "run", str(suite), "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    cells_file = None
    while time.time() < deadline:
        found = list(out.glob("*/cells.jsonl"))
        if found and found[0].read_text().count("\n") >= 1:
            cells_file = found[0]
            break
        time.sleep(0.2)
    assert cells_file is not None, proc.communicate(timeout=5)[0]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = cells_file.parent
    done_before = [json.loads(x)["key"] for x in cells_file.read_text().splitlines()]
    assert 1 <= len(done_before) < 4
    assert not (run_dir / "records.parquet").exists()
    r = subprocess.run([sys.executable, "-m", "lowdim_bench.cli", "run", "--resume", str(run_dir)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(done_before)} already done" in r.stderr
    keys = [json.loads(x)["key"] for x in cells_file.read_text().splitlines()]
    assert len(keys) == 4 and len(set(keys)) == 4 and keys[:len(done_before)] == done_before
    df = pl.read_parquet(run_dir / "records.parquet")
    per_cell = df.filter(pl.col("metric") == "quality").group_by("cell_key").len()
    assert per_cell["len"].to_list() == [1, 1, 1, 1]
