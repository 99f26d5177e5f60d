"""Conformance checks for the solve kind: a Problem's instances and scores, a Solver's contract.

What the harness relies on (run/solve.py): instances are a function of (split, seed) and the
"val" instance is not the "test" one (their data, or the held-out part their truth scores on); `score` gives the headline with its direction; a solve is
repeatable from its generator's seed (the memory-tracked solve and the timed one must be the
same computation); the trace's iterations rise and its seconds never go back; declared FLOPs
are finite; the `tune` grid holds valid settings. check_method and check_task hand a Solver or
a Problem here.
"""
from __future__ import annotations

import copy
import hashlib
import math
import pickle
import traceback
from typing import Any, Callable

import numpy as np
import torch

from .. import api
from ..hparams import declared
from .results import CheckResult, failed, passed, skipped


def _digest(data: Any) -> str:
    """A content hash of an instance's data (tensors and arrays by their bytes)."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif hasattr(x, "__dict__"):
            walk({k: v for k, v in vars(x).items() if k != "memo"})
        else:
            h.update(pickle.dumps(x))

    walk(data)
    return h.hexdigest()


def _label(what: str, obj: Any) -> str:
    return f"{what} {getattr(obj, 'name', type(obj).__name__)!r}"


# ---- problem ------------------------------------------------------------------------------------
def problem_declaration(p: api.Problem) -> CheckResult:
    issues = []
    if not isinstance(getattr(p, "name", None), str) or not p.name:
        issues.append("name is not a non-empty string")
    if not p.description:
        issues.append("description is empty (`lowdim-bench list tasks` shows it)")
    if not isinstance(getattr(p, "quality", None), api.Quality):
        issues.append("quality is not an api.Quality")
    if not isinstance(getattr(p, "size", None), api.Knob):
        issues.append("size is not an api.Knob (the knob solvers are compared at)")
    issues += [f"setting {k!r} has no help text" for k, prm in declared(type(p)).items() if not prm.help]
    if issues:
        return failed("declaration", _label("problem", p), "a well-formed Problem declaration", "; ".join(issues))
    return passed("declaration", _label("problem", p))


def problem_instances(p: api.Problem) -> CheckResult:
    name, label = "instances", _label("problem", p)
    a, b = p.instance("test", 0), p.instance("test", 0)
    if _digest(a.data) != _digest(b.data):
        return failed(name, label, "instance('test', 0) twice gives the same data", "the data differ")
    val = p.instance("val", 0)
    if _digest((val.data, val.truth)) == _digest((a.data, a.truth)):
        return failed(name, label, "the 'val' and 'test' instances of a seed differ (tuning is never scored on the "
                      "test instance)", "they are the same instance")
    low, high = p.size_range(a)
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        return failed(name, label, "size_range gives ints 1 <= low <= high", f"{low!r}, {high!r}")
    if not all(isinstance(v, (int, float)) for v in a.info.values()):
        return failed(name, label, "instance.info holds numbers (recorded as instance_<name>)", repr(a.info)[:200])
    return passed(name, label, f"sizes {low}..{high}")


PROBLEM_CHECKS: dict[str, Callable[[api.Problem], CheckResult]] = {
    "declaration": problem_declaration,
    "instances": problem_instances,
}


# ---- solver -------------------------------------------------------------------------------------
class SolverSubject:
    def __init__(self, solver: api.Solver | type[api.Solver], problem: api.Problem | None = None,
                 size: int | None = None, **hparams: Any) -> None:
        self.cls = solver if isinstance(solver, type) else type(solver)
        self.solver = self.cls(**hparams) if isinstance(solver, type) else solver
        if problem is None:
            from ..registry import Registry

            problem = Registry.load().task(self.cls.problem).cls()
        self.problem = problem
        self.instance = problem.instance("test", 0)
        low, high = problem.size_range(self.instance)
        self.size = int(size) if size is not None else min(high, max(low, 4))
        self.label = f"solver {self.cls.name!r} on {problem.name!r} at {problem.size.name} {self.size}"

    def solve(self, seed: int = 0, trace: api.Trace = api.no_trace) -> Any:
        return self.solver.solve(copy.deepcopy(self.instance.data), self.size, torch.Generator().manual_seed(seed), trace)


def solver_declaration(s: SolverSubject) -> CheckResult:
    cls, issues = s.cls, []
    if cls.kind != "solve" or cls.supported_kinds() != ("solve",):
        issues.append(f"kind {cls.kind!r} / kinds {cls.supported_kinds()} (a Solver runs as 'solve' only)")
    if cls.problem != s.problem.name:
        issues.append(f"problem {cls.problem!r} is not {s.problem.name!r}")
    if not isinstance(cls.knob, api.Knob) or not cls.knob.integer:
        issues.append(f"knob {cls.knob!r} is not an integer api.Knob (the problem's size)")
    if not cls.description:
        issues.append("description is empty")
    issues += [f"setting {k!r} has no help text" for k, p in declared(cls).items() if not p.help]
    for key, values in cls.tune.items():
        if key not in declared(cls):
            issues.append(f"tune names {key!r}, not a setting")
        else:
            try:
                [declared(cls)[key].check(cls.name, key, v) for v in values]
            except api.PluginError as e:
                issues.append(f"tune grid: {e}")
    if issues:
        return failed("declaration", s.label, "a well-formed Solver declaration", "; ".join(issues))
    return passed("declaration", s.label)


def solver_scored(s: SolverSubject) -> CheckResult:
    name = "scored"
    scores = s.problem.score(s.instance, s.solve())
    q = s.problem.quality
    if q.name not in scores:
        return failed(name, s.label, f"score() includes the headline {q.name!r}", f"it gave {sorted(scores)}")
    head = scores[q.name]
    if head.higher_is_better is not q.higher_is_better:
        return failed(name, s.label, f"the headline's higher_is_better is {q.higher_is_better}",
                      f"{head.higher_is_better!r}")
    if not math.isfinite(head.value):
        return failed(name, s.label, "a finite headline", repr(head.value))
    return passed(name, s.label, f"{q.name} {head.value:.4g}")


def solver_repeatable(s: SolverSubject) -> CheckResult:
    name = "repeatable"
    q = s.problem.quality.name
    a, b = (s.problem.score(s.instance, s.solve(seed=3))[q].value for _ in range(2))
    if not (a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-300)):
        return failed(name, s.label, "two solves with the same generator seed score the same (the harness times one "
                      "and memory-tracks the other)", f"{a!r} then {b!r}")
    return passed(name, s.label)


def solver_trace(s: SolverSubject) -> CheckResult:
    name = "trace"
    log = api.TraceLog(s.problem, s.instance)
    s.solve(trace=log)
    its = log.column("iteration")
    if any(b <= a for a, b in zip(its, its[1:])):
        return failed(name, s.label, "trace iterations strictly rising", str(its[:20]))
    secs = [v for v in log.column("seconds") if not math.isnan(v)]
    if any(b < a for a, b in zip(secs, secs[1:])):
        return failed(name, s.label, "`seconds` (cumulative solve time) never falls", str(secs[:20]))
    bad = [(r["iteration"], k) for r in log.rows for k, v in r.items() if not isinstance(v, float)]
    if bad:
        return failed(name, s.label, "every traced value a float", str(bad[:5]))
    if not log.rows:
        return skipped(name, s.label, "the solver traces nothing (allowed: no curve is drawn)")
    return passed(name, s.label, f"{len(log.rows)} rows")


def solver_flops(s: SolverSubject) -> CheckResult:
    declared_flops = s.solver.flops(s.instance.data, s.size)
    if not declared_flops:
        return skipped("flops", s.label, "no FLOPs declared")
    bad = {k: v for k, v in declared_flops.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)}
    if bad:
        return failed("flops", s.label, "finite, non-negative declared FLOPs", repr(bad))
    return passed("flops", s.label, ", ".join(f"{k} {v:.3g}" for k, v in declared_flops.items()))


SOLVER_CHECKS: dict[str, Callable[[SolverSubject], CheckResult]] = {
    "declaration": solver_declaration,
    "scored": solver_scored,
    "repeatable": solver_repeatable,
    "trace": solver_trace,
    "flops": solver_flops,
}


def run_solve_check(checks: dict[str, Callable[[Any], CheckResult]], check: str, subject: Any, label: str) -> CheckResult:
    if check not in checks:
        raise KeyError(f"unknown check {check!r}; known: {', '.join(checks)}")
    try:
        return checks[check](subject)
    except Exception as exc:  # a plugin may raise anything: the check fails with where it broke
        tb = traceback.format_exc().strip().splitlines()
        return failed(check, label, "the check to run", f"{type(exc).__name__}: {exc} ({' | '.join(tb[-3:])})")
