"""Roofline: calibration is measured and cached per device/torch/threads; the bound and bytes moved
follow their stated formulas."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lowdim_bench.measure import roofline
from lowdim_bench.measure.roofline import Calibration, bound, inference_bytes, train_step_bytes

SMALL = {"matmul_sizes": (32, 64), "buffer_bytes": 1 << 20, "calls": 3, "budget_s": 0.05}


def cal(flops: float = 1e9, bw: float = 1e8) -> Calibration:
    return Calibration(device_name="test", device_type="cpu", torch_version="x", threads=1, matmul_flops=flops,
                       bandwidth=bw, copy_bandwidth=bw, read_bandwidth=bw, matmul_size=64, buffer_bytes=1 << 20,
                       seconds=0.0, measured_at="")


def test_measure_gives_positive_rates_and_the_best_of_copy_and_read() -> None:
    c = roofline.measure("cpu", **SMALL)
    assert c.matmul_flops > 0 and c.copy_bandwidth > 0 and c.read_bandwidth > 0
    assert c.bandwidth == max(c.copy_bandwidth, c.read_bandwidth)
    assert c.matmul_size in (32, 64) and c.buffer_bytes == 1 << 20
    assert c.threads == torch.get_num_threads() and c.torch_version == torch.__version__
    assert c.ridge == c.matmul_flops / c.bandwidth


def test_measure_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="matmul sizes"):
        roofline.measure("cpu", matmul_sizes=(0,))
    with pytest.raises(ValueError, match="buffer_bytes"):
        roofline.measure("cpu", matmul_sizes=(8,), buffer_bytes=2)


def test_calibrate_caches_per_thread_count_and_restores_threads(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOWDIM_BENCH_CACHE", str(tmp_path))
    calls: list[int] = []
    real = roofline.measure

    def counting(device, **kw):
        calls.append(torch.get_num_threads())
        return real(device, **kw)

    monkeypatch.setattr(roofline, "measure", counting)
    before = torch.get_num_threads()
    first = roofline.calibrate("cpu", threads=1, **SMALL)
    again = roofline.calibrate("cpu", threads=1, **SMALL)
    assert calls == [1] and again == first and first.threads == 1
    assert torch.get_num_threads() == before
    path = roofline.cache_path("cpu", 1)
    assert path.parent == tmp_path / "roofline" and json.loads(path.read_text())["threads"] == 1
    roofline.calibrate("cpu", threads=2, **SMALL)
    assert calls == [1, 2]  # another thread count is another roofline
    roofline.calibrate("cpu", threads=1, refresh=True, **SMALL)
    assert calls == [1, 2, 1]


def test_cache_key_depends_on_device_torch_and_threads() -> None:
    k = roofline.cache_key("cpu-a", "cpu", "2.13", 2)
    assert k == roofline.cache_key("cpu-a", "cpu", "2.13", 2)
    assert len({k, roofline.cache_key("cpu-b", "cpu", "2.13", 2), roofline.cache_key("cpu-a", "cpu", "2.14", 2),
                roofline.cache_key("cpu-a", "cpu", "2.13", 1), roofline.cache_key("cpu-a", "cuda", "2.13", 2)}) == 5


def test_a_torn_cache_file_is_measured_again(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOWDIM_BENCH_CACHE", str(tmp_path))
    path = roofline.cache_path("cpu", 1)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert roofline.load("cpu", 1) is None
    assert roofline.calibrate("cpu", threads=1, **SMALL).matmul_flops > 0
    assert roofline.load("cpu", 1) is not None


def test_calibrate_rejects_zero_threads() -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        roofline.calibrate("cpu", threads=0)


def test_bound_is_the_slower_roof_and_fraction_is_bound_over_measured() -> None:
    c = cal(flops=1e9, bw=1e8)  # ridge 10 FLOP/B
    compute = bound(2e6, 1e4, c, measured_s=4e-3)  # 2 ms of math, 0.1 ms of traffic
    assert compute.seconds == pytest.approx(2e-3) and compute.compute_bound
    assert compute.fraction == pytest.approx(0.5) and compute.intensity == pytest.approx(200)
    memory = bound(1e4, 1e6, c, measured_s=1e-2)  # 10 us of math, 10 ms of traffic
    assert memory.seconds == pytest.approx(1e-2) and not memory.compute_bound and memory.fraction == pytest.approx(1.0)
    assert math.isnan(bound(1, 1, c).fraction)
    assert bound(5, 0, c).intensity == math.inf
    with pytest.raises(ValueError, match="flops=-1"):
        bound(-1, 1, c)


def test_inference_bytes_are_stored_bytes_plus_inputs_and_outputs() -> None:
    layer = nn.Linear(20, 10)
    x = torch.randn(4, 20)
    y = layer(x)
    assert inference_bytes(layer, (x,), y) == 4 * (20 * 10 + 10) + 4 * 4 * 20 + 4 * 4 * 10


def test_inference_bytes_count_sparse_values_and_indices() -> None:
    w = torch.randn(6, 5).relu().to_sparse()
    nnz = w._nnz()
    assert roofline.tensor_bytes(w) == nnz * 4 + 2 * nnz * 8
    assert roofline.tensor_bytes({"a": torch.zeros(3), "b": [torch.zeros(2, dtype=torch.float64), None]}) == 12 + 16


def test_train_step_bytes_follow_adamw_traffic() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    for p in model[0].parameters():
        p.requires_grad_(False)  # frozen: read twice, no gradient, no optimizer traffic
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    x, y = torch.randn(5, 8), torch.randint(4, (5,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    stored = 4 * (8 * 16 + 16 + 16 * 4 + 4)
    trained = 4 * (16 * 4 + 4)
    inputs = 5 * 8 * 4 + 5 * 8
    # forward + backward reads, gradient write, AdamW: read grad, read+write param, read+write 2 states
    assert train_step_bytes(model, opt, (x, y)) == 2 * stored + trained + (trained + 2 * trained + 4 * trained) + inputs
    assert train_step_bytes(model, None, (x, y)) == 2 * stored + trained + inputs


# ---- the latency metric's records -------------------------------------------------------------

def metric_context(protocol: dict):
    import copy as copy_mod

    from fakeplugins import TinyTask
    from lowdim_bench.api import MeasureContext, Method

    task = TinyTask()
    model = task.make_model(0)
    return MeasureContext(task=task, method=Method(), model=model, inference_model=copy_mod.deepcopy(model),
                          kind="train", device=torch.device("cpu"), protocol=protocol,
                          make_optimizer=lambda m: torch.optim.AdamW(m.parameters()), dense_params=0)


PROTO = {"batch_sizes": [4], "warmup": 1, "repeats": 5, "max_seconds": 0.0, "train_batch_size": 8,
         "memory_batch_size": 8, "roofline": True, "compile": False}


def test_latency_metric_adds_threads_and_a_roofline_per_latency_figure(tmp_path, monkeypatch) -> None:
    from lowdim_bench_builtin.metrics.standard import LatencyMetric

    monkeypatch.setenv("LOWDIM_BENCH_CACHE", str(tmp_path))
    c = roofline.calibrate("cpu", **SMALL)  # cached: the metric reads it instead of measuring
    got = {(m.metric, m.phase, m.batch_size): m for m in LatencyMetric().measure(metric_context(PROTO))}
    assert got[("threads", None, None)].value == torch.get_num_threads()
    assert got[("roofline_peak_flops", None, None)].value == c.matmul_flops
    assert got[("roofline_peak_bandwidth", None, None)].value == c.bandwidth
    # inference at batch 4 of the 8-16-3 MLP: FLOPs 2*4*(8*16+16*3), bytes params + in + out
    stored = 4 * (8 * 16 + 16 + 16 * 3 + 3)
    flops_, bytes_ = 2 * 4 * (8 * 16 + 16 * 3), stored + 4 * 4 * 8 + 4 * 4 * 3
    want = max(flops_ / c.matmul_flops, bytes_ / c.bandwidth)
    assert got[("roofline_bound", "inference", 4)].value == pytest.approx(want)
    assert got[("arithmetic_intensity", "inference", 4)].value == pytest.approx(flops_ / bytes_)
    p50 = got[("latency_p50", "inference", 4)].value
    assert got[("roofline_fraction", "inference", 4)].value == pytest.approx(want / p50)
    for name in ("roofline_bound", "roofline_fraction", "arithmetic_intensity"):
        assert (name, "train_step", 8) in got
    off = LatencyMetric().measure(metric_context({**PROTO, "roofline": False}))
    assert not [m for m in off if m.metric.startswith("roofline")]
    # inference left to the interleaved pass: the training step only
    step_only = LatencyMetric().measure(metric_context({**PROTO, "cell_inference_latency": False}))
    assert {m.phase for m in step_only if m.metric.startswith("latency")} == {"train_step"}


def test_compiled_inference_keeps_compile_time_apart() -> None:
    from lowdim_bench.measure.latency import time_compiled_inference

    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU()).train()
    timed = time_compiled_inference(model, (torch.randn(2, 8),), warmup=1, repeats=5, device="cpu", backend="eager")
    assert timed.compile_seconds > 0 and timed.stats.n == 5 and len(timed.stats.times) == 5
    assert model.training  # eval only while timed


def test_latency_metric_with_compile_records_compile_seconds(monkeypatch) -> None:
    from lowdim_bench.measure import latency
    from lowdim_bench_builtin.metrics.standard import LatencyMetric

    real = latency.time_compiled_inference
    monkeypatch.setattr(latency, "time_compiled_inference",
                        lambda *a, **kw: real(*a, **{**kw, "backend": "eager"}))  # inductor takes ~15 s here
    got = {(m.metric, m.phase, m.batch_size) for m in
           LatencyMetric().measure(metric_context({**PROTO, "compile": True, "roofline": False}))}
    assert {("compile_seconds", "inference_compiled", 4), ("latency_p50", "inference_compiled", 4),
            ("latency_p50", "inference", 4)} <= got


def test_memory_metric_records_the_analytic_split_beside_the_measured_one() -> None:
    from lowdim_bench_builtin.metrics.standard import MemoryMetric

    got = {(m.metric, m.phase): m.value for m in MemoryMetric().measure(metric_context(PROTO))}
    params = 4 * (8 * 16 + 16 + 16 * 3 + 3)
    assert got[("memory_analytic_parameters", "train_step")] == params == got[("memory_parameters", "train_step")]
    assert got[("memory_analytic_gradients", "train_step")] == params
    assert got[("memory_analytic_optimizer", "train_step")] == 2 * params
    assert got[("memory_analytic_total", "train_step")] == 4 * params
