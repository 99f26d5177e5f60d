"""Method checks that run the method: a knob sweep, a short training run, the deployed form.

Split from method_checks.py (the structural checks) only to keep modules short; METHOD_CHECKS
there lists them all in their order.
"""
from __future__ import annotations

import copy
import math
import time

import torch

from ..run.budget import counted
from .outputs import compare_outputs, outputs as _outputs
from .results import CheckResult, failed, passed, skipped
from .subject import MethodSubject


def sweep(lo: float, hi: float, integer: bool, points: int) -> list[float]:
    """Knob values from lo to hi: all of them when few, else geometrically spaced, ends included."""
    if integer:
        lo, hi = int(lo), int(hi)
        if hi - lo + 1 <= points:
            return list(range(lo, hi + 1))
        vals = {lo, hi}
        for i in range(1, points - 1):
            vals.add(int(round(math.exp(math.log(max(lo, 1)) + i * (math.log(hi) - math.log(max(lo, 1))) / (points - 1)))))
        return sorted(v for v in vals if lo <= v <= hi)
    return [lo + i * (hi - lo) / (points - 1) for i in range(points)]


def check_budget_monotone(s: MethodSubject) -> CheckResult:
    """Counted parameters never decrease as the size knob grows (the budget search bisects on it)."""
    name = "budget_monotone"
    knob = s.cls.knob
    if knob is None:
        return skipped(name, s.label, "the method has no size knob")
    if s.kind == "merge":
        return skipped(name, s.label, "a merge's knob is not a size: merging leaves parameter counts as they are")
    base = s.base()
    lo, hi = s.method.knob_range(base)
    values = sweep(lo, hi, knob.integer, s.options.sweep_points)
    counts = [counted(s.apply(base, size=v), s.kind) for v in values]
    pairs = ", ".join(f"{v:g}:{c}" for v, c in zip(values, counts))
    what = "trainable" if s.kind == "adapt" else "stored"
    drops = [(values[i], values[i + 1]) for i in range(len(counts) - 1) if counts[i + 1] < counts[i]]
    if drops:
        return failed(name, s.label, f"{what} parameters non-decreasing in {knob.name}",
                      f"{knob.name}:count {pairs}; decreases between {drops[:3]}")
    if len(values) > 1 and counts[-1] == counts[0]:
        return failed(name, s.label, f"{what} parameters growing with {knob.name} over its range",
                      f"the same count at every value: {pairs}")
    return passed(name, s.label, pairs)


def check_smoke_run(s: MethodSubject) -> CheckResult:
    """apply + a few steps of the harness's training loop + evaluation, within the time limit."""
    name = "smoke_run"
    if s.kind == "merge":
        return _smoke_merge(s)
    start = time.perf_counter()
    model = s.apply()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trains = s.trains(model)
    result = s.train(model) if trains else None
    quality = s.task.evaluate(model, s.splits()["val"])
    seconds = time.perf_counter() - start
    if trains and before and not any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters()
                                     if n in before):
        return failed(name, s.label, "training changes the trainable parameters",
                      f"none changed in {s.options.steps} steps: are they used in the forward?")
    if not math.isfinite(quality):
        return failed(name, s.label, "a finite quality", f"{quality}")
    if seconds > s.options.time_limit_s:
        return failed(name, s.label, f"apply, {s.options.steps} training steps and evaluation within "
                      f"{s.options.time_limit_s:g} s", f"{seconds:.1f} s")
    loss = f", final loss {result.final_loss:.4g}" if result and result.final_loss is not None else ""
    return passed(name, s.label, f"{seconds:.2f} s, {s.task.quality.name} {quality:.4g}{loss}")


def _smoke_merge(s: MethodSubject) -> CheckResult:
    """A merge as the harness scores it: the merged model seen by each member (`member_view`) on
    that member's test split, within the time limit."""
    name = "smoke_run"
    start = time.perf_counter()
    merged = s.apply()
    scores = {}
    for member, model in s.members().items():
        test = s.task.splits(f"member:{member}", s.seed)["test"]
        scores[member] = s.task.evaluate(s.task.member_view(merged, member, model), test)
    seconds = time.perf_counter() - start
    bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
    if bad:
        return failed(name, s.label, "a finite quality on every member", f"{bad}")
    if seconds > s.options.time_limit_s:
        return failed(name, s.label, f"the merge and its scoring within {s.options.time_limit_s:g} s", f"{seconds:.1f} s")
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    return passed(name, s.label, f"{seconds:.2f} s, {s.task.quality.name} per member: {shown}")


def check_inference_form(s: MethodSubject) -> CheckResult:
    """for_inference (what FLOPs and latency measure) computes what the trained model computes."""
    name = "inference_form"
    trained = s.trained()
    deployed = s.method.for_inference(copy.deepcopy(trained))
    ok, what = compare_outputs(_outputs(deployed, s.inputs()), _outputs(trained, s.inputs()), s.options.atol * 10,
                               s.options.rtol * 10)
    if not ok:
        return failed(name, s.label, "the deployed form computes what the trained model computes", what)
    return passed(name, s.label, what)
