"""The Ray executor on a local Ray instance: the same records and failure reasons as the local
executor, cancellation, and one run resumed across executors. Skipped without the `ray` extra."""
from __future__ import annotations

import json
import os

import polars as pl
import pytest

from conftest import TESTS, write_suite
from lowdim_bench.core import events as ev
from lowdim_bench.plan import expand
from lowdim_bench.registry import Registry
from lowdim_bench.run.executor import LocalExecutor
from lowdim_bench.run.runner import run_cells
from lowdim_bench.suite import load_suite

ray = pytest.importorskip("ray", reason="the Ray executor needs the extra: pip install 'lowdim-bench[ray]'")
from lowdim_bench.run.ray_executor import RayExecutor, failure_reason  # noqa: E402

pytestmark = pytest.mark.slow

FAULTS = """
name = "r"
seeds = [0]
measure = ["params", "latency", "memory"]
timeout_s = 120
tasks = ["tiny"]
[protocol]
batch_sizes = [4]
repeats = 3
warmup = 1
max_seconds = 0.2
memory_batch_size = 8
train_batch_size = 8
roofline = false
[methods.fake-head]
[methods.fake-width]
knobs = [4]
[methods.fake-boom]
[methods.fake-die]
[methods.fake-hang]
timeout_s = 6
"""


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module, started where workers find the fake plugins."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWDIM_BENCH_PLUGIN_MODULES", "fakeplugins")
        mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 1024**2)
        yield
        ray.shutdown()


def _plan(tmp_path, body):
    reg = Registry.load()
    suite = load_suite(write_suite(tmp_path / "s.toml", body), reg)
    return reg, expand(suite, reg), {"name": suite.name, "version": suite.version}


def _identity(df: pl.DataFrame) -> set[tuple]:
    """What a record is, its value and timings aside."""
    cols = ["cell_key", "method", "metric", "phase", "batch_size", "unit", "status", "device", "threads", "knob"]
    return set(df.select(cols).rows())


def test_ray_gives_the_records_and_failure_reasons_of_the_local_executor(tmp_path, fake_plugins, local_ray):
    reg, cells, meta = _plan(tmp_path, FAULTS)
    seen: list = []
    on_ray = run_cells(cells, meta, reg, out_dir=tmp_path / "ray", listeners=[seen.append], jobs=2,
                       executor_kind="ray")
    local = run_cells(cells, meta, reg, out_dir=tmp_path / "local", jobs=2)
    assert (on_ray.ok, on_ray.failed) == (local.ok, local.failed) == (2, 3)
    a, b = (pl.read_parquet(r.run_dir / "records.parquet") for r in (on_ray, local))
    assert _identity(a) == _identity(b)
    reasons = [{r["method"]: r["error"].splitlines()[0] for r in df.filter(pl.col("status") == "failed").to_dicts()}
               for df in (a, b)]
    assert reasons[0] == reasons[1]
    assert reasons[0]["fake-hang"] == "time limit of 6 s exceeded" and "SIGKILL" in reasons[0]["fake-die"]
    assert "inference_interleaved" in set(a["phase"])  # the pass after the cells ran here, on the Ray records
    slots = {e.slot for e in seen if isinstance(e, ev.CellStarted)}
    assert all(s.endswith(" cpu") for s in slots)  # "<node address> cpu": where Ray placed each cell


def test_a_ray_run_cancelled_midway_is_finished_by_the_local_executor(tmp_path, fake_plugins, local_ray, monkeypatch):
    monkeypatch.setenv("FAKE_SLOW_SECONDS", "1.0")
    body = 'name = "k"\nseeds = [0, 1, 2, 3, 4]\nmeasure = ["params"]\ntasks = ["tiny"]\n[methods.fake-slow]\n'
    reg, cells, meta = _plan(tmp_path, body)
    seen: list = []
    first = run_cells(cells, meta, reg, out_dir=tmp_path / "reports", listeners=[seen.append], jobs=1,
                      executor=RayExecutor(jobs=1, threads=1),
                      should_stop=lambda: any(isinstance(e, ev.CellFinished) for e in seen))
    assert first.cancelled and 1 <= first.ok < 5
    assert any(isinstance(e, ev.CellCancelled) for e in seen) or first.ok + first.failed < 5
    second = run_cells([], {}, reg, resume=first.run_dir, executor=LocalExecutor(jobs=2))
    assert not second.cancelled and (second.ok, second.failed) == (5, 0)
    keys = [json.loads(x)["key"] for x in (first.run_dir / "cells.jsonl").read_text().splitlines()]
    cell_keys = [k for k in keys if not k.startswith("interleave:")]
    assert sorted(cell_keys) == sorted(c.key for c in cells)  # every cell exactly once, across the two
    assert json.loads((first.run_dir / "run.json").read_text())["status"] == "finished"


def test_a_dead_ray_worker_or_node_is_a_failed_cell_with_rays_reason():
    x = ray.exceptions
    assert "died" in failure_reason(x.WorkerCrashedError(), ray)
    assert failure_reason(x.RayTaskError("run_cell", "tb", ModuleNotFoundError("No module named 'lowdim_bench'")),
                          ray).startswith("the Ray task failed before the cell ran: ModuleNotFoundError")
