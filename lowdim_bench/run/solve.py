"""A solve cell, start to finish, inside its worker process (run/worker.py hands it over).

problem.instance -> the size (the cell's knob, or its budget as a fraction of the largest size)
-> tune the solver's own settings on the "val" instance -> solve a copy of the "test" instance,
memory-tracked (never timed; it is also every solver's warm-up, tuned or not) -> solve the "test"
instance again with the same seeded generator, timed, with a trace -> score -> records. There is no model, no training recipe and no learning-rate grid: what a neural
cell gets from them, a solve cell gets from its problem and its solver.

Records (docs/plugins.md, "Solve kind"): `quality` (the problem's headline) and every figure
`Problem.score` returns; `quality_val` and `tuned` (phase = setting) when a grid was tried;
the solver's own `extras`; `wall_seconds` of the timed solve (trace scoring taken off),
`seconds_per_round` (median of the solver's round times), `memory_peak[solve]` (tensors plus
numpy/Python allocated by the solve at its peak), its parts and the process figure; declared
`flops_<name>`; `instance_<name>` descriptors; and each trace row as `trace_<name>` records
with `step` = the iteration (error vs rounds; with `trace_seconds`, error vs seconds).
"""
from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from contextlib import nullcontext
from typing import Any

import torch

from .. import api
from ..core import events as ev
from ..measure.call_memory import ProcessPeak, peak_memory

try:  # numpy's and scipy's BLAS get the worker's thread count too (scikit-learn brings threadpoolctl)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

SECONDS = {"seconds", "round_seconds"}  # trace values in seconds, by the contract's convention


def run(host: Any) -> None:
    """Run the solve cell of `host` (a worker.CellRun: cell, registry, device, base, config, emit, send)."""
    cell = host.cell
    problem = host.registry.task(cell.task).cls(**cell.task_options)
    solver_cls = host.registry.method(cell.method).cls
    if not isinstance(problem, api.Problem) or not issubclass(solver_cls, api.Solver):
        raise api.PluginError(f"a solve cell pairs a Problem with a Solver; got task {cell.task!r} and method "
                              f"{cell.method!r}")
    if solver_cls.problem != problem.name:
        raise api.PluginError(f"solver {cell.method!r} solves {solver_cls.problem!r}, not {problem.name!r}")
    limits = threadpool_limits(torch.get_num_threads()) if threadpool_limits else nullcontext()
    with limits:
        Solve(host, problem, solver_cls).run()


class Solve:
    def __init__(self, host: Any, problem: api.Problem, solver_cls: type[api.Solver]) -> None:
        self.host, self.problem, self.solver_cls = host, problem, solver_cls
        self.cell = host.cell
        self.quality = problem.quality

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.cell.seed)

    def run(self) -> None:
        cell, host, problem = self.cell, self.host, self.problem
        test = problem.instance("test", cell.seed)
        size, fraction = self.size(test)
        host.base.update(knob=float(size), budget_reached=fraction, over_budget=False,
                         budget_scope=problem.budget_scope)
        host.config["quality"] = {"name": self.quality.name, "unit": self.quality.unit}
        host.config["size"] = {"name": problem.size.name, "value": size, "range": list(problem.size_range(test))}
        host.emit([api.Measurement("budget_reached", fraction, "fraction")])
        settings = self.tune(size)
        solver = self.solver_cls(**settings)
        host.config["hparams"] = solver.hparams
        host.send(ev.Progress(cell.key, "solve (memory)", 0, 1))
        pristine = copy.deepcopy(test.data)  # what a solver memoises on its data must not help the tracked solve
        _, peak = peak_memory(lambda: solver.solve(pristine, size, self.generator()), host.device)
        del pristine
        solution, trace, wall, process = self.timed(solver, test, size)
        self.record_scores(test, solution)
        self.record_costs(solver, test, size, trace, wall, process, peak)
        self.record_trace(trace)

    def size(self, test: api.Instance) -> tuple[int, float]:
        """The cell's size: its knob, or its budget times the instance's largest size; and that
        size as a fraction of the largest (what `budget_reached` says for a solve cell)."""
        low, high = self.problem.size_range(test)
        name = self.problem.size.name
        if self.cell.knob is not None:
            size = int(self.cell.knob)
            if not low <= size <= high:
                raise api.PluginError(f"problem {self.problem.name!r}: {name} = {size} is outside [{low}, {high}] for "
                                      f"these options")
        elif self.cell.budget is not None:
            size = min(high, max(low, round(self.cell.budget * high)))
        else:
            raise api.PluginError(f"a solve cell needs a size: give solver {self.cell.method!r} `knobs` ({name}) "
                                  "or `budgets` (fractions of the largest size)")
        return size, size / high

    def tune(self, size: int) -> dict[str, Any]:
        """The suite's settings plus the best of the solver's `tune` grid on the "val" instance (the
        settings the suite fixes are not tuned). One candidate: no validation solve at all."""
        cell, fixed = self.cell, dict(self.cell.hparams)
        grid = {k: list(v) for k, v in self.solver_cls.tune.items() if k not in fixed}
        candidates = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
        if len(candidates) <= 1:
            return {**fixed, **(candidates[0] if candidates else {})}
        val = self.problem.instance("val", cell.seed)
        sign = 1 if self.quality.higher_is_better else -1
        start = time.perf_counter()
        scores: list[float] = []
        for i, cand in enumerate(candidates):
            self.host.send(ev.Progress(cell.key, "tune on val", i, len(candidates)))
            solution = self.solver_cls(**fixed, **cand).solve(val.data, size, self.generator())
            scores.append(self.headline(self.problem.score(val, solution)).value)
        ranked = [s if not math.isnan(s) else -sign * math.inf for s in scores]
        best = max(range(len(candidates)), key=lambda i: (sign * ranked[i], -i))  # ties: the first listed
        chosen = candidates[best]
        self.host.config["tune"] = {"grid": grid, "scores": scores, "selected": chosen}
        self.host.emit([api.Measurement("tune_seconds", time.perf_counter() - start, "s", higher_is_better=False),
                        api.Measurement("quality_val", scores[best], self.quality.unit,
                                        higher_is_better=self.quality.higher_is_better)]
                       + [api.Measurement("tuned", float(v), "", phase=k) for k, v in chosen.items()
                          if isinstance(v, (int, float))])
        return {**fixed, **chosen}

    def headline(self, scores: dict[str, api.Measurement]) -> api.Measurement:
        if self.quality.name not in scores:
            raise api.PluginError(f"problem {self.problem.name!r}: score() gave {sorted(scores)}, without its "
                                  f"headline {self.quality.name!r}")
        return scores[self.quality.name]

    def timed(self, solver: api.Solver, test: api.Instance, size: int) -> tuple[Any, api.TraceLog, float, int | None]:
        """The scored solve: wall seconds minus the time the trace spent scoring iterates."""
        key = self.cell.key
        log = api.TraceLog(self.problem, test)
        steps = solver.iterations() or 0

        def trace(iteration: int, **values: Any) -> None:
            log(iteration, **values)
            self.host.send(ev.Progress(key, "solve", int(iteration), max(steps, int(iteration))))

        with ProcessPeak() as process:
            start = time.perf_counter()
            solution = solver.solve(test.data, size, self.generator(), trace)
            wall = time.perf_counter() - start - log.seconds_inside
        return solution, log, wall, process.bytes

    def record_scores(self, test: api.Instance, solution: Any) -> None:
        scores = self.problem.score(test, solution)
        head = self.headline(scores)
        q = self.quality
        self.host.emit([api.Measurement("quality", head.value, q.unit, higher_is_better=q.higher_is_better)]
                       + list(scores.values()) + list(getattr(solution, "extras", []) or [])
                       + [api.Measurement(f"instance_{k}", v, "") for k, v in test.info.items()])
        self.directions = {name: m.higher_is_better for name, m in scores.items()}

    def record_costs(self, solver: api.Solver, test: api.Instance, size: int, trace: api.TraceLog, wall: float,
                     process: int | None, peak: Any) -> None:
        out = [api.Measurement("wall_seconds", wall, "s", higher_is_better=False)]
        rounds = [r["round_seconds"] for r in trace.rows if r.get("iteration", 0) >= 1 and "round_seconds" in r]
        if rounds:
            out.append(api.Measurement("seconds_per_round", statistics.median(rounds), "s", higher_is_better=False))
        out += [api.Measurement("memory_peak", peak.total, "B", "solve", higher_is_better=False),
                api.Measurement("memory_tensors_peak", peak.tensors, "B", "solve", higher_is_better=False),
                api.Measurement("memory_python_peak", peak.python, "B", "solve", higher_is_better=False)]
        if process is not None:
            out.append(api.Measurement("memory_process_peak", process, "B", "solve", higher_is_better=False))
        if peak.cuda_allocated is not None:
            out.append(api.Measurement("memory_cuda_peak", peak.cuda_allocated, "B", "solve", higher_is_better=False))
        out += [api.Measurement(f"flops_{k}", v, "FLOP", higher_is_better=False)
                for k, v in solver.flops(test.data, size).items()]
        self.host.emit(out)

    def record_trace(self, trace: api.TraceLog) -> None:
        out = []
        for row in trace.rows:
            step = int(row["iteration"])
            for k, v in row.items():
                if k == "iteration":
                    continue
                hib = False if k in SECONDS else self.directions.get(k)
                out.append(api.Measurement(f"trace_{k}", v, "s" if k in SECONDS else "", higher_is_better=hib,
                                           step=step))
        if out:
            self.host.emit(out)

