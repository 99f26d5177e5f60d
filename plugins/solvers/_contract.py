"""The shape every classic-problem plugin here has, so the harness can wire a `solve` kind.

A `Problem` (Task-like) makes seeded instances and scores solutions; a `Solver` (Method-like)
solves one instance at a size (rank, samples, features). Why a separate shape: these papers
compare algorithms, not network layers, so there is no model to apply a method to. Both sides
declare typed `params` (lowdim_bench.hparams.Param) that are checked when built, exactly as a
Method's or Task's are.

Who sees what: `solve` gets `Instance.data` only; the ground truth (`Instance.truth`) is for
`Problem.score` and `Problem.progress`, so no solver can read it by accident.
Per-iteration figures go through `trace(iteration, **values)`: float values are recorded as
they are; an `estimate=` value is scored by the problem (`progress`) outside the solver's clock.
"""
from __future__ import annotations

import math
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from lowdim_bench.api import Knob, Measurement, PluginError, Quality
from lowdim_bench.hparams import Param, check_all

SPLITS = ("val", "test")


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """torch.sparse_csr_tensor without invariant checks (callers build valid CSR) and without
    torch's one-time "CSR support is in beta" warning (the products used here are long stable)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class Trace(Protocol):
    def __call__(self, iteration: int, **values: Any) -> None: ...


def no_trace(iteration: int, **values: Any) -> None:
    """A trace that records nothing."""


@dataclass
class Instance:
    """One problem instance. `data`: what a solver may read; `truth`: for scoring only;
    `info`: descriptors worth recording beside the results (measured incoherence, OPT, ...)."""

    problem: str
    split: str
    seed: int
    data: Any
    truth: Any
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class Solution:
    """Base of every solution: `extras` are measurements the solver itself reports (stored
    bytes of its model, samples actually drawn), recorded beside the problem's score."""

    extras: list[Measurement] = field(default_factory=list, kw_only=True)


def measurement(metric: str, value: float, unit: str = "", higher_is_better: bool | None = None,
                phase: str | None = None) -> Measurement:
    return Measurement(metric=metric, value=float(value), unit=unit, phase=phase, higher_is_better=higher_is_better)


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
    """A numpy Generator drawn from a torch one (solvers take a torch.Generator, per the contract)."""
    if generator is None:
        raise PluginError("a solver needs a torch.Generator (seeded by the harness)")
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


class Problem:
    """A Task-like problem: seeded instances, a scorer, the size knob solvers are compared at.

    `score` returns named measurements, each with its direction (`higher_is_better`); the
    measurement named `quality.name` is the headline. `progress` is a cheap per-iteration
    version of the headline for traces (default: none)."""

    name: ClassVar[str]
    quality: ClassVar[Quality]
    size: ClassVar[Knob]
    params: ClassVar[dict[str, Param]] = {}
    description: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = check_all(type(self), "problem", options)
        self.check_options()

    def check_options(self) -> None:
        """Cross-field checks of the options (raise PluginError naming the values)."""

    def instance(self, split: str, seed: int) -> Instance:
        raise NotImplementedError

    def score(self, instance: Instance, solution: Any) -> dict[str, Measurement]:
        raise NotImplementedError

    def progress(self, instance: Instance, estimate: Any) -> dict[str, float]:
        return {}

    def size_range(self, instance: Instance) -> tuple[int, int]:
        """Smallest and largest size that makes sense for this instance."""
        raise NotImplementedError


class Solver:
    """A Method-like algorithm for one problem. `solve` must draw every random number from
    `generator` and may call `trace(iteration, seconds=..., estimate=...)` once per iteration,
    with `seconds` its own cumulative solve time (excluding the trace calls)."""

    name: ClassVar[str]
    problem: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def __init__(self, **hparams: Any) -> None:
        self.hparams: dict[str, Any] = check_all(type(self), "method", hparams)

    def solve(self, data: Any, size: int, generator: torch.Generator, trace: Trace = no_trace) -> Solution:
        raise NotImplementedError

    def flops(self, data: Any, size: int) -> dict[str, float]:
        """Declared FLOPs ({"round": ..., "total": ...}); empty where the solver declares none."""
        return {}

    def check_size(self, size: Any, low: int, high: int) -> int:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not low <= size <= high:
            raise PluginError(f"solver {self.name!r}: size = {size!r} must be an int in [{low}, {high}]")
        return int(size)


class Stopwatch:
    """Accumulates the solver's own time over timed blocks, so trace calls are not counted."""

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
    """A trace that keeps its rows; with a problem and instance it scores `estimate=` values
    (outside the solver's clock) and keeps the result instead of the estimate."""

    problem: Problem | None = None
    instance: Instance | None = None
    rows: list[dict[str, float]] = field(default_factory=list)

    def __call__(self, iteration: int, **values: Any) -> None:
        estimate = values.pop("estimate", None)
        row: dict[str, float] = {"iteration": float(iteration)}
        for k, v in values.items():
            row[k] = float(v)
        if estimate is not None and self.problem is not None and self.instance is not None:
            row.update(self.problem.progress(self.instance, estimate))
        self.rows.append(row)

    def column(self, name: str) -> list[float]:
        return [r.get(name, math.nan) for r in self.rows]

