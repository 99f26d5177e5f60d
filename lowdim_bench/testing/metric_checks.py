"""Conformance checks for a Metric: it returns Measurement objects with names, units and finite values.

The kit measures the dense reference on the smoke task with a light protocol (below), so a
metric that reads protocol keys finds the standard ones. A metric that measures nothing there
(one about merge cells) is measured again in a merge context: the first task with a family, the
base and its members (each the base plus seeded noise), the base as the scored model.
"""
from __future__ import annotations

import copy
import math
import traceback
from typing import Any

import torch

from .. import api
from ..run.train import make_optimizer
from .results import CheckResult, failed, passed
from .subject import family_task, perturb_, resolve_task

KIT_PROTOCOL: dict[str, Any] = {
    "batch_sizes": [1, 8], "warmup": 1, "repeats": 3, "max_seconds": 0.2, "threads": 0,
    "memory_batch_size": 8, "train_batch_size": 8,
}


class _Reference(api.Method):
    """The unchanged model, every parameter trainable: what the kit measures."""

    name = "kit-reference"
    kind = "train"
    description = "the model as it is"

    def apply(self, model, size, ctx):
        return copy.deepcopy(model)


def measure_context(task: api.Task | str | None = None, seed: int = 0) -> api.MeasureContext:
    task = resolve_task(task)
    model = task.make_model(seed).eval()
    method = _Reference()
    dense = sum(p.numel() for p in model.parameters())
    return api.MeasureContext(task=task, method=method, model=model, inference_model=copy.deepcopy(model), kind="train",
                              device=torch.device("cpu"), protocol=dict(KIT_PROTOCOL),
                              make_optimizer=lambda m: make_optimizer(m, method, 1e-3, 0.0), dense_params=dense,
                              splits=task.splits("target", seed))  # as the harness fills it (core v2)


def merge_context(seed: int = 0) -> api.MeasureContext:
    """A merge cell's context for the kit: family task, base, noisy members; the base is the model."""
    task = family_task()
    base = perturb_(task.make_model(seed), seed, 0.05).eval()
    members = {m: perturb_(copy.deepcopy(base), seed + 101 * (i + 1), 0.1).eval() for i, m in enumerate(task.members())}
    ctx = measure_context(task, seed)
    ctx.model, ctx.inference_model, ctx.kind = base, copy.deepcopy(base), "merge"
    ctx.base_model, ctx.members, ctx.extras = base, members, {"seed": seed}
    return ctx


def check_measurements(metric: api.Metric | type[api.Metric], task: api.Task | str | None = None) -> CheckResult:
    metric = metric() if isinstance(metric, type) else metric
    label = f"metric {type(metric).name!r}"
    name = "measurements"
    try:
        out = metric.measure(measure_context(task))
        if isinstance(out, list) and not out and task is None:
            label += " (merge context)"
            out = metric.measure(merge_context())
    except Exception as exc:
        tb = traceback.format_exc().strip().splitlines()
        return failed(name, label, "measure() to run on the smoke task", f"{type(exc).__name__}: {exc} ({tb[-2:]})")
    if not isinstance(out, list) or not out:
        return failed(name, label, "a non-empty list of Measurement", f"{type(out).__name__}: {out!r:.200}")
    problems = []
    for m in out:
        if not isinstance(m, api.Measurement):
            problems.append(f"{m!r:.80} is not a Measurement")
            continue
        if not isinstance(m.metric, str) or not m.metric:
            problems.append(f"{m!r}: empty metric name")
        if not isinstance(m.unit, str) or not m.unit:
            problems.append(f"{m.metric}: no unit")
        try:
            ok = math.isfinite(float(m.value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(f"{m.metric}: value {m.value!r} is not a finite number")
        if m.phase is not None and not isinstance(m.phase, str):
            problems.append(f"{m.metric}: phase {m.phase!r} is not a string")
        if m.batch_size is not None and not isinstance(m.batch_size, int):
            problems.append(f"{m.metric}: batch_size {m.batch_size!r} is not an int")
    if not type(metric).description:
        problems.append("description is empty")
    if problems:
        return failed(name, label, "Measurement objects with a name, a unit and a finite value", "; ".join(problems[:6]))
    return passed(name, label, ", ".join(sorted({f"{m.metric} [{m.unit}]" for m in out}))[:300])


METRIC_CHECKS = {"measurements": check_measurements}
