"""CUDA paths, where a GPU is present (skipped elsewhere; nothing in CI needs one): event timing,
allocator peaks, one cell per device at a time, and warm cell processes that may use CUDA.
A GPU owner runs these and scripts/check_cuda.py (every metric through the harness)."""
from __future__ import annotations

import statistics
import time

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import write_suite
from lowdim_bench.core import events as ev
from lowdim_bench.measure import latency, memory
from lowdim_bench.plan import expand
from lowdim_bench.registry import Registry
from lowdim_bench.run import warm
from lowdim_bench.run.executor import LocalExecutor, device_slots
from lowdim_bench.run.runner import run_cells
from lowdim_bench.suite import load_suite

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device; on a GPU machine also run scripts/check_cuda.py")


def test_cuda_calls_are_timed_by_events_not_by_the_host_clock() -> None:
    dev = torch.device("cuda")
    x = torch.randn(2048, 2048, device=dev)
    stopped_clock = lambda: 0.0  # noqa: E731 - a host clock that never moves: only events can time a call
    stats = latency.time_calls(lambda: x @ x, warmup=3, repeats=20, device=dev, clock=stopped_clock)
    assert stats.n == 20 and stats.device == "cuda" and stats.p50 > 0
    walls = []
    for _ in range(20):  # the same call timed from the host with a synchronise each: launch cost added
        torch.cuda.synchronize()
        t = time.perf_counter()
        x @ x
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t)
    assert 0.3 * statistics.median(walls) <= stats.p50 <= 1.2 * statistics.median(walls)


def test_interleaved_timing_keeps_the_order_of_kernel_cost() -> None:
    dev = torch.device("cuda")
    small, big = torch.randn(512, 512, device=dev), torch.randn(4096, 4096, device=dev)
    stats = latency.time_interleaved({"small": lambda: small @ small, "big": lambda: big @ big}, 3, 15, dev)
    assert stats["big"].p50 > 10 * stats["small"].p50  # 512x more FLOPs


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)).cuda()


def test_allocator_peaks_bound_the_tracked_split_of_a_training_step() -> None:
    model = _mlp()
    x, y = torch.randn(256, 1024, device="cuda"), torch.randint(10, (256,), device="cuda")
    opt = torch.optim.AdamW(model.parameters())
    b = memory.measure_train_step(model, lambda: F.cross_entropy(model(x), y), opt, device="cuda")
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert b.parameters == param_bytes
    assert b.optimizer >= 2 * param_bytes  # exp_avg and exp_avg_sq live on the GPU (step scalars may not)
    assert b.peak == b.parameters + b.gradients + b.optimizer + b.activations + b.other
    assert b.cuda_allocated_peak is not None and b.cuda_reserved_peak is not None
    assert b.cuda_allocated_peak >= b.peak  # the allocator rounds blocks up and sees every live tensor
    assert b.cuda_reserved_peak >= b.cuda_allocated_peak


def test_allocator_peaks_of_inference_see_the_activation() -> None:
    model = _mlp().eval()
    x = torch.randn(512, 1024, device="cuda")
    b = memory.measure_inference(model, (x,), device="cuda")
    assert b.parameters == sum(p.numel() * 4 for p in model.parameters()) and b.gradients == 0
    assert b.activations >= 512 * 1024 * 4  # the hidden layer's output
    assert b.cuda_allocated_peak >= b.peak and b.cuda_reserved_peak >= b.cuda_allocated_peak


@pytest.mark.slow
def test_warm_cells_use_cuda_because_the_server_never_initialised_it(fake_plugins) -> None:
    if not warm.available():
        pytest.skip("no fork server on this platform")
    import warm_probe

    ctx = warm.context("warm")
    for _ in range(2):  # two children of the same server, each with its own CUDA context
        q = ctx.Queue()
        p = ctx.Process(target=warm_probe.cuda_probe, args=(q,), daemon=True)
        p.start()
        got = q.get(timeout=180)
        p.join(60)
        assert got == {"value": 3.0, "bad_fork": False}, got


@pytest.mark.slow
def test_one_cell_per_device_at_a_time_and_each_on_its_slot(tmp_path, fake_plugins) -> None:
    n = torch.cuda.device_count()
    assert device_slots("cuda", 8) == [f"cuda:{i}" for i in range(n)]
    body = (f'name = "gpu"\nseeds = {list(range(2 * n))}\nmeasure = ["params", "memory", "latency"]\n'
            'tasks = ["tiny"]\ntimeout_s = 300\n[protocol]\nbatch_sizes = [4]\nrepeats = 5\nwarmup = 1\n'
            'max_seconds = 0.2\nmemory_batch_size = 8\ntrain_batch_size = 8\n[methods.fake-head]\n')
    reg = Registry.load()
    suite = load_suite(write_suite(tmp_path / "s.toml", body), reg)
    cells = expand(suite, reg, device="cuda")
    busy: dict[str, str] = {}
    clashes: list[str] = []

    def watch(e) -> None:
        if isinstance(e, ev.CellStarted):
            if e.slot in busy.values():
                clashes.append(e.slot)
            busy[e.key] = e.slot
        elif isinstance(e, ev.CellFinished):
            busy.pop(e.key, None)

    executor = LocalExecutor(device="cuda", jobs=8)
    res = run_cells(cells, {"name": suite.name, "version": suite.version}, reg, out_dir=tmp_path / "reports",
                    device="cuda", listeners=[watch], executor=executor)
    assert (res.ok, res.failed) == (2 * n, 0) and not clashes
    df = pl.read_parquet(res.run_dir / "records.parquet")
    cells_df = df.filter(pl.col("phase") != "inference_interleaved")
    assert set(cells_df["device"]) == {f"cuda:{i}" for i in range(n)}
    mem = {r["metric"]: r["value"] for r in df.filter(pl.col("phase") == "train_step").to_dicts()
           if r["metric"].startswith("memory_")}
    assert mem["memory_cuda_allocated_peak"] >= mem["memory_peak"]
    interleaved = df.filter(pl.col("phase") == "inference_interleaved")
    assert len(interleaved) and set(interleaved["device"]) <= {f"cuda:{i}" for i in range(n)}
