"""Classic low-rank and sampling problems and the algorithms the seed papers compare on them.

Problems (matrix completion, l_p regression sampling, feature selection) are Tasks of the
`solve` kind and the solvers Methods of it (lowdim_bench.api.Problem / Solver); this module
registers them all (entry point `solvers`). docs/solvers.md describes each algorithm,
suites/solvers.toml runs the papers' checks.
"""
from __future__ import annotations

from lowdim_bench.hookspecs import hookimpl

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


@hookimpl
def register_tasks(register) -> None:
    for cls in PROBLEMS.values():
        register(cls)


@hookimpl
def register_methods(register) -> None:
    for cls in SOLVERS.values():
        register(cls)
