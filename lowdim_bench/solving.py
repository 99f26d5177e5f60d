"""What a solve-kind plugin exchanges with the harness besides Problem and Solver (lowdim_bench.api).

Why a module of its own: these pieces (instances, solutions, traces, seeding) are plain data and
helpers that neither need nor name the neural contract, and keeping them out of api.py keeps
that file about models. api.py re-exports every name here; plugins import them from
`lowdim_bench.api`. docs/plugins.md ("Solve kind") documents the contract.

Who sees what: `Solver.solve` gets `Instance.data` only; the ground truth (`Instance.truth`) is
for `Problem.score` and `Problem.progress`, so no solver can read it by accident. Per-iteration
figures go through `trace(iteration, **values)`: numbers are recorded as they are; an
`estimate=` value is scored by the problem (`progress`) outside the solver's clock.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from .hparams import PluginError

SPLITS = ("val", "test")  # "val": tuning the solver's own knobs; "test": the scored solve


class Trace(Protocol):
    def __call__(self, iteration: int, **values: Any) -> None: ...


def no_trace(iteration: int, **values: Any) -> None:
    """A trace that records nothing."""


@dataclass
class Instance:
    """One problem instance. `data`: what a solver may read; `truth`: for scoring only;
    `info`: descriptors recorded beside the results (observed entries, measured incoherence, OPT)."""

    problem: str
    split: str
    seed: int
    data: Any
    truth: Any
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class Solution:
    """Base of every solution: `extras` are Measurements the solver reports itself (bytes of its
    model, rounds run, seconds its row scores took), recorded beside the problem's score."""

    extras: list = field(default_factory=list, kw_only=True)  # of api.Measurement


def check_split(problem: str, split: str) -> None:
    if split not in SPLITS:
        raise PluginError(f"problem {problem!r}: split {split!r} is not one of {SPLITS}")


def split_seed(problem: str, stream: str, seed: int, options: dict[str, Any]) -> np.random.SeedSequence:
    """A seed sequence per (problem, stream, seed, options). With the split as the stream, "val"
    and "test" never share data, and two option sets never share a stream by accident."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PluginError(f"problem {problem!r}: seed = {seed!r} must be an int >= 0")
    text = problem + "|" + stream + "|" + repr(sorted(options.items()))
    return np.random.SeedSequence([seed, zlib.crc32(text.encode())])


def numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy Generator drawn from the torch one a solver is handed (all its randomness comes from it)."""
    if generator is None:
        raise PluginError("a solver needs a torch.Generator (seeded by the harness)")
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


class Stopwatch:
    """Accumulates a solver's own time over timed blocks, so trace calls are not counted."""

    def __init__(self) -> None:
        self.total = 0.0
        self.last = 0.0
        self._start = 0.0

    def __enter__(self) -> "Stopwatch":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.last = time.perf_counter() - self._start
        self.total += self.last


@dataclass
class TraceLog:
    """A trace that keeps its rows; with a problem and an instance it scores `estimate=` values
    (outside the solver's clock) and keeps the result instead of the estimate. `seconds_inside`
    is the time spent in the trace itself, which the harness takes off a solve's wall time."""

    problem: Any = None  # api.Problem
    instance: Instance | None = None
    rows: list[dict[str, float]] = field(default_factory=list)
    seconds_inside: float = 0.0

    def __call__(self, iteration: int, **values: Any) -> None:
        start = time.perf_counter()
        estimate = values.pop("estimate", None)
        row: dict[str, float] = {"iteration": float(iteration)}
        for k, v in values.items():
            row[k] = float(v)
        if estimate is not None and self.problem is not None and self.instance is not None:
            row.update(self.problem.progress(self.instance, estimate))
        self.rows.append(row)
        self.seconds_inside += time.perf_counter() - start

    def column(self, name: str) -> list[float]:
        return [r.get(name, math.nan) for r in self.rows]
