"""Conformance checks for a Metric: it returns Measurement objects with names, units and finite values.

The kit builds the MeasureContext the way the worker does (run/worker.py): the task's fresh model
(the base of a `train` cell, frozen) is applied by a reference method that trains every
parameter, trained a few steps with the harness's loop, and measured with a light protocol
(below), so a metric that reads protocol keys finds the standard ones. `base_model` and `splits`
are always set, `applied_model` (a frozen copy before training) only when the metric declares
`needs = ("applied_model",)`, as in the harness; `members` is empty (not a merge cell).
"""
from __future__ import annotations

import copy
import math
import traceback
from typing import Any

import torch

from .. import api
from ..run.models import seed_everything
from ..run.train import make_optimizer, train
from .results import CheckResult, failed, passed
from .subject import resolve_task

NEEDS = ("applied_model",)  # what a Metric may ask the harness to prepare
TRAIN_STEPS = 3

KIT_PROTOCOL: dict[str, Any] = {
    "batch_sizes": [1, 8], "warmup": 1, "repeats": 3, "max_seconds": 0.2, "threads": 0,
    "memory_batch_size": 8, "train_batch_size": 8,
}


class _Reference(api.Method):
    """The unchanged model, every parameter trainable: what the kit measures."""

    name = "kit-reference"
    kind = "train"
    kinds = ("train", "compress")
    description = "the model as it is"

    def apply(self, model, size, ctx):
        return copy.deepcopy(model)


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).requires_grad_(False).eval()


def measure_context(task: api.Task | str | None = None, seed: int = 0,
                    needs: tuple[str, ...] = ()) -> api.MeasureContext:
    """A MeasureContext as the worker builds one for a `train` cell of the reference method (a
    `compress` cell on the task's pretrained base when it has one)."""
    task = resolve_task(task)
    device = torch.device("cpu")
    method = _Reference()
    ready = task.pretrained("target", seed)
    kind = "train" if ready is None else "compress"
    seed_everything(seed)
    start = (task.make_model(seed) if ready is None else ready).eval()
    model = method.apply(start, None, api.ApplyContext(seed=seed, device=device, task=task, kind=kind))
    model.requires_grad_(True)
    applied = _frozen(model) if "applied_model" in needs else None
    splits = task.splits("target", seed)
    recipe = task.recipe("pretrain" if ready is None else "recover").replace(steps=TRAIN_STEPS, log_every=1)
    seed_everything(seed)
    train(model, task, method, splits["train"], recipe, seed, device)
    model.eval()
    dense = sum(p.numel() for p in start.parameters())
    return api.MeasureContext(task=task, method=method, model=model, inference_model=method.for_inference(
                                  copy.deepcopy(model)), kind=kind, device=device, protocol=dict(KIT_PROTOCOL),
                              make_optimizer=lambda m: make_optimizer(m, method, recipe.lr, recipe.weight_decay),
                              dense_params=dense, base_model=_frozen(start), applied_model=applied, splits=splits)


def check_measurements(metric: api.Metric | type[api.Metric], task: api.Task | str | None = None,
                       ctx: api.MeasureContext | None = None) -> CheckResult:
    metric = metric() if isinstance(metric, type) else metric
    label = f"metric {type(metric).name!r}"
    name = "measurements"
    needs = tuple(type(metric).needs)
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        return failed(name, label, f"needs drawn from {NEEDS}", f"needs = {needs!r}")
    ctx = ctx or measure_context(task, needs=needs)  # a ready context: a metric only some kinds feed (merge)
    try:
        out = metric.measure(ctx)
    except Exception as exc:
        tb = traceback.format_exc().strip().splitlines()
        hint = "" if needs else " (ctx.applied_model is None unless the metric declares needs = (\"applied_model\",))"
        return failed(name, label, "measure() to run on the smoke task",
                      f"{type(exc).__name__}: {exc} ({tb[-2:]}){hint if 'applied_model' in ''.join(tb) else ''}")
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
        if m.seq_len is not None and not isinstance(m.seq_len, int):
            problems.append(f"{m.metric}: seq_len {m.seq_len!r} is not an int")
        if m.higher_is_better is not None and not isinstance(m.higher_is_better, bool):
            problems.append(f"{m.metric}: higher_is_better {m.higher_is_better!r} is not True, False or None")
    if not type(metric).description:
        problems.append("description is empty")
    if problems:
        return failed(name, label, "Measurement objects with a name, a unit and a finite value", "; ".join(problems[:6]))
    return passed(name, label, ", ".join(sorted({f"{m.metric} [{m.unit}]" for m in out}))[:300])


METRIC_CHECKS = {"measurements": check_measurements}
