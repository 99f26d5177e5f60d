"""Per-call latency: warm-up, then each call timed on its own, summarised by percentiles.

Why per call: block means (torch.utils.benchmark's blocked_autorange) hide the tail that p90/p99
should show. CPU calls are timed with a wall clock around the call; CUDA calls with a pair of
events per call and one synchronise at the end, so timing adds no host-device stalls.
docs/measurement.md has the protocol.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..api import Inputs

MIN_SAMPLES = 5  # max_seconds never stops the timing before this many calls
Clock = Callable[[], float]


@dataclass
class LatencyStats:
    """Per-call seconds and their summary. Percentiles as numpy's default (linear) method."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float
    min: float
    max: float
    spread: float  # p90 / p50: 1.0 is a perfectly steady machine
    threads: int
    device: str
    times: list[float] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks.

    Sorted values x[0..n-1]; h = (n - 1) q / 100; result x[floor h] + (h - floor h) (x[floor h + 1]
    - x[floor h]). Same as numpy.percentile's default method.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    xs = sorted(values)
    h = (len(xs) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def summarise(times: Sequence[float], threads: int, device: str) -> LatencyStats:
    """Statistics of per-call times. stdev is the population one (ddof=0), as numpy.std."""
    if not times:
        raise ValueError("no timed calls")
    n = len(times)
    mean = sum(times) / n
    stdev = math.sqrt(sum((t - mean) ** 2 for t in times) / n)
    p50, p90 = percentile(times, 50), percentile(times, 90)
    spread = p90 / p50 if p50 > 0 else math.nan
    return LatencyStats(n=n, p50=p50, p90=p90, p99=percentile(times, 99), mean=mean, stdev=stdev,
                        min=min(times), max=max(times), spread=spread, threads=threads,
                        device=device, times=list(times))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to n (default: usable cores), never above the usable cores.

    More threads than cores is slower, not faster (see docs/measurement.md). Returns the count set.
    """
    cores = usable_cores()
    if n is None:
        n = cores
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    torch.set_num_threads(min(n, cores))
    return torch.get_num_threads()


class _CallTimer:
    """Times single calls: wall clock on CPU, a CUDA event pair per call on CUDA."""

    def __init__(self, device: torch.device, clock: Clock) -> None:
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.clock = clock
        self.pending: list = []

    def call(self, fn: Callable[[], object]) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self.pending.append((start, end))
        else:
            t0 = self.clock()
            fn()
            self.pending.append(self.clock() - t0)

    def times(self) -> list[float]:
        """Seconds per call, in call order (one synchronise on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) / 1000.0 for s, e in self.pending]
        return list(self.pending)


def _sync(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device | str,
               max_seconds: float | None = None, clock: Clock = time.perf_counter) -> LatencyStats:
    """Run fn `warmup` times untimed, then time up to `repeats` calls one by one.

    `max_seconds` caps the timed phase (wall clock, checked between calls): timing stops once it
    is spent and at least MIN_SAMPLES calls are done; `n` is the number really timed.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(dev)
    timer = _CallTimer(dev, clock)
    start = clock()
    for i in range(repeats):
        timer.call(fn)
        if max_seconds is not None and i + 1 >= MIN_SAMPLES and clock() - start >= max_seconds:
            break
    return summarise(timer.times(), torch.get_num_threads(), str(dev))


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device | str,
                     clock: Clock = time.perf_counter, max_seconds: float | None = None) -> dict[str, LatencyStats]:
    """Time several functions in rounds A B A B ..., so a slow spell of the machine hits all alike.

    Compare methods by the ratio of their figures from one such run, not across runs.
    `max_seconds` caps the timed rounds (checked after each round, never before MIN_SAMPLES rounds),
    so every function keeps the same number of calls.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    dev = torch.device(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(dev)
    timers = {name: _CallTimer(dev, clock) for name in fns}
    start = clock()
    for i in range(repeats):
        for name, fn in fns.items():
            timers[name].call(fn)
        if max_seconds is not None and i + 1 >= MIN_SAMPLES and clock() - start >= max_seconds:
            break
    threads = torch.get_num_threads()
    return {name: summarise(t.times(), threads, str(dev)) for name, t in timers.items()}


@dataclass
class CompiledTiming:
    """torch.compile's first call (compile time) kept apart from the steady-state latency."""

    compile_seconds: float  # first call of the compiled model: tracing, code generation and one run
    stats: LatencyStats  # per-call times after it, warm-up skipped as for eager


def time_compiled_inference(model: nn.Module, inputs: tuple | Inputs, warmup: int, repeats: int,
                            device: torch.device | str, max_seconds: float | None = None,
                            backend: str = "inductor", clock: Clock = time.perf_counter) -> CompiledTiming:
    """Compile model (in eval mode), time its first call on its own, then time it like `time_inference`.

    torch._dynamo is reset first, so every call measures a cold compile (a second batch size would
    otherwise reuse or recompile the earlier graph, and its compile time would mean something else).
    """
    import torch._dynamo

    dev = torch.device(device)
    inp = Inputs.of(inputs)
    torch._dynamo.reset()
    with eval_mode(model), torch.no_grad():
        compiled = torch.compile(model, backend=backend)
        t0 = clock()
        inp.call(compiled)
        _sync(dev)
        first = clock() - t0
        stats = time_calls(lambda: inp.call(compiled), warmup, repeats, dev, max_seconds, clock)
    return CompiledTiming(first, stats)


@contextmanager
def module_modes(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put every submodule in train/eval mode, then give each back its own earlier mode."""
    before = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, was in before:
            m.training = was


def eval_mode(model: nn.Module):
    return module_modes(model, False)


def time_inference(model: nn.Module, inputs: tuple | Inputs, warmup: int, repeats: int, device: torch.device | str,
                   max_seconds: float | None = None, clock: Clock = time.perf_counter) -> LatencyStats:
    """Latency of one forward call in eval mode under torch.no_grad; modes are restored after."""
    inp = Inputs.of(inputs)
    with eval_mode(model), torch.no_grad():
        return time_calls(lambda: inp.call(model), warmup, repeats, device, max_seconds, clock)


def time_train_step(model: nn.Module, step_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                    warmup: int, repeats: int, device: torch.device | str, max_seconds: float | None = None,
                    clock: Clock = time.perf_counter) -> LatencyStats:
    """Latency of zero_grad + step_fn (forward, loss) + backward + optimizer.step, in train mode.

    The calls train the model like real steps do: pass copies if the weights must stay.
    """

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        step_fn().backward()
        optimizer.step()

    with module_modes(model, True), torch.enable_grad():
        return time_calls(step, warmup, repeats, device, max_seconds, clock)
