"""The solve contract as the built-in solvers use it: lowdim_bench.api's Problem and Solver (and
the instance, solution and trace types) plus two helpers of this package.

The contract itself is public (lowdim_bench/api.py, lowdim_bench/solving.py; docs/plugins.md,
"Solve kind"); this module only re-exports it, so the solvers keep one import line.
"""
from __future__ import annotations

import warnings

import torch

from lowdim_bench.api import Measurement
from lowdim_bench.api import (Instance, Problem, Solution, Solver, Stopwatch, Trace, TraceLog, no_trace,  # noqa: F401
                              numpy_rng, split_seed)
from lowdim_bench.solving import SPLITS, check_split  # noqa: F401


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """torch.sparse_csr_tensor without invariant checks (callers build valid CSR) and without
    torch's one-time "CSR support is in beta" warning (the products used here are long stable)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def measurement(metric: str, value: float, unit: str = "", higher_is_better: bool | None = None,
                phase: str | None = None) -> Measurement:
    return Measurement(metric=metric, value=float(value), unit=unit, phase=phase, higher_is_better=higher_is_better)
