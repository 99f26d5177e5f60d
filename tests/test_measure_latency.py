"""Latency statistics and call protocol, on a fake clock: no timing thresholds here."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lowdim_bench.measure import latency
from lowdim_bench.measure.latency import (
    MIN_SAMPLES, percentile, set_threads, summarise, time_calls, time_inference, time_interleaved,
    time_train_step,
)

CPU = torch.device("cpu")


class FakeClock:
    """Time moves only when a timed function says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def takes(self, durations: list[float]):
        it = iter(durations)

        def fn() -> None:
            self.now += next(it)

        return fn


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_percentile_on_known_list():
    xs = [float(v) for v in range(10, 0, -1)]  # unsorted on purpose: 10 .. 1
    assert percentile(xs, 50) == pytest.approx(5.5)
    assert percentile(xs, 90) == pytest.approx(9.1)
    assert percentile(xs, 99) == pytest.approx(9.91)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 10.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 100):
        xs = rng.exponential(size=n).tolist()
        for q in (1, 25, 50, 90, 99):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_statistics():
    s = summarise([1.0, 2.0, 3.0, 4.0], threads=3, device="cpu")
    assert (s.n, s.min, s.max, s.mean) == (4, 1.0, 4.0, 2.5)
    assert s.stdev == pytest.approx(math.sqrt(1.25))  # population stdev, as numpy.std
    assert s.p50 == 2.5 and s.p90 == pytest.approx(3.7)
    assert s.spread == pytest.approx(3.7 / 2.5)
    assert (s.threads, s.device, s.times) == (3, "cpu", [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(summarise([0.0, 0.0], 1, "cpu").spread)


def test_time_calls_times_each_call_and_skips_warmup():
    clock = FakeClock()
    durations = [50.0, 60.0] + [0.1, 0.2, 0.3, 0.4, 0.5, 1.0]
    s = time_calls(clock.takes(durations), warmup=2, repeats=6, device=CPU, clock=clock)
    assert s.n == 6
    assert s.times == pytest.approx(durations[2:])
    assert s.max == pytest.approx(1.0)  # the slow warm-up calls are not in it
    assert s.p50 == pytest.approx(0.35)
    assert s.threads == torch.get_num_threads() and s.device == "cpu"


def test_max_seconds_stops_early_but_keeps_min_samples():
    clock = FakeClock()
    s = time_calls(clock.takes([1.0] * 100), warmup=0, repeats=100, device=CPU, max_seconds=2.0, clock=clock)
    assert s.n == MIN_SAMPLES == len(s.times)
    clock = FakeClock()
    s = time_calls(clock.takes([1.0] * 100), warmup=0, repeats=100, device=CPU, max_seconds=7.5, clock=clock)
    assert s.n == 8
    clock = FakeClock()
    s = time_calls(clock.takes([1.0] * 3), warmup=0, repeats=3, device=CPU, max_seconds=0.5, clock=clock)
    assert s.n == 3  # fewer repeats than MIN_SAMPLES asked for: all of them


def test_interleaved_order_and_per_function_times():
    clock = FakeClock()
    log: list[str] = []

    def make(name: str, seconds: float):
        def fn() -> None:
            log.append(name)
            clock.now += seconds

        return fn

    stats = time_interleaved({"A": make("A", 1.0), "B": make("B", 3.0)}, warmup=2, repeats=4, device=CPU, clock=clock)
    assert log == ["A", "B"] * 6
    assert stats["A"].n == stats["B"].n == 4
    assert stats["A"].times == [1.0] * 4 and stats["B"].times == [3.0] * 4


def test_set_threads_clamps_to_usable_cores(monkeypatch):
    cores = latency.usable_cores()
    assert set_threads(10**6) == cores == torch.get_num_threads()
    assert set_threads(None) == cores
    assert set_threads(1) == 1 == torch.get_num_threads()
    monkeypatch.setattr(latency, "usable_cores", lambda: 1)
    assert set_threads(8) == 1
    with pytest.raises(ValueError):
        set_threads(0)


class Probe(nn.Module):
    """Records the mode and grad state it runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, self.head.training, torch.is_grad_enabled()))
        return self.head(self.lin(x))


def test_time_inference_uses_eval_no_grad_and_restores_modes():
    model = Probe()
    model.train()
    model.head.eval()  # mixed modes must come back exactly
    s = time_inference(model, (torch.randn(5, 4),), warmup=1, repeats=3, device=CPU)
    assert s.n == 3 and len(s.times) == 3
    assert model.seen == [(False, False, False)] * 4
    assert model.training and not model.head.training and model.lin.training
    assert torch.is_grad_enabled()
    assert all(p.grad is None for p in model.parameters())


def test_time_train_step_trains_in_train_mode_and_restores():
    model = Probe()
    model.eval()
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    w0 = model.lin.weight.detach().clone()
    with torch.no_grad():  # the step must still have gradients
        s = time_train_step(model, lambda: ((model(x) - y) ** 2).mean(), opt, warmup=2, repeats=4, device=CPU)
        assert not torch.is_grad_enabled()
    assert s.n == 4
    assert model.seen == [(True, True, True)] * 6
    assert not model.training and not model.head.training
    assert opt.state[model.lin.weight]["step"].item() == 6  # warm-up and timed calls each stepped
    assert not torch.equal(model.lin.weight, w0)


def test_time_calls_real_clock_gives_positive_times():
    s = time_calls(lambda: torch.ones(10).sum(), warmup=1, repeats=5, device="cpu")
    assert s.n == 5 and all(t > 0 for t in s.times) and s.min <= s.p50 <= s.p90 <= s.p99 <= s.max


def test_repeats_must_be_positive():
    with pytest.raises(ValueError):
        time_calls(lambda: None, warmup=0, repeats=0, device=CPU)
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, warmup=0, repeats=0, device=CPU)
