"""Classic low-rank and sampling problems and the algorithms the seed papers compare on them.

Phase 1 of issue 16: problems (matrix completion, l_p regression sampling, feature selection)
and solvers in the uniform shape of `_contract.py`, tested directly. They are not registered as
plugins yet: the `solve` kind is not in the core (lowdim_bench.api.KINDS). Phase 2 wires
PROBLEMS and SOLVERS through a register hook; docs/solvers.md describes each algorithm.
"""
from __future__ import annotations

from ._contract import Instance, Problem, Solution, Solver, TraceLog
from .altmin import AltMin, AltMinFast
from .completion import MatrixCompletion
from .lp_sampling import Leverage, Lewis, LpSensitivity, RootLeverage, Uniform
from .quickselection import DenseAutoencoder, QuickSelection
from .regression import LpRegression
from .selection import FeatureSelection
from .selection_baselines import LaplacianScore, VarianceSelector
from .softimpute import PomegaSvd, SoftImpute

PROBLEMS: dict[str, type[Problem]] = {c.name: c for c in (MatrixCompletion, LpRegression, FeatureSelection)}
SOLVERS: dict[str, type[Solver]] = {c.name: c for c in (
    AltMin, AltMinFast, SoftImpute, PomegaSvd,
    Uniform, Leverage, RootLeverage, Lewis, LpSensitivity,
    QuickSelection, DenseAutoencoder, VarianceSelector, LaplacianScore)}

__all__ = ["PROBLEMS", "SOLVERS", "Instance", "Problem", "Solution", "Solver", "TraceLog"]
