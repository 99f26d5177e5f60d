"""Budget search: find the size knob whose applied model meets a parameter budget.

The budget is a fraction of the dense model's parameters: trainable ones for adapt, stored
ones otherwise. We count the real applied model (never a formula the method states) and take
the largest knob value that stays within the budget, so no method is compared above it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from ..api import ApplyContext, Method
from ..measure.params import count_params


def fresh(ctx: ApplyContext) -> ApplyContext:
    """The same context with a newly seeded generator, so each apply of a search draws the same
    numbers and the chosen model does not depend on which knob values were tried before it."""
    return replace(ctx, generator=torch.Generator().manual_seed(ctx.seed))


@dataclass
class Sized:
    model: nn.Module
    knob: float | None
    fraction: float
    over_budget: bool = False


Include = Callable[[str], bool] | None


def counted(model: nn.Module, kind: str, include: Include = None) -> int:
    c = count_params(model, include)
    return c.trainable if kind == "adapt" else c.stored


def search(method: Method, base: nn.Module, kind: str, budget: float, dense: int, ctx: ApplyContext,
           steps: int = 24, include: Include = None) -> Sized:
    lo, hi = method.knob_range(base)
    integer = method.knob.integer
    seen: dict[float, Sized] = {}

    def at(k: float) -> Sized:
        if k not in seen:
            m = method.apply(base, k, fresh(ctx))
            seen[k] = Sized(m, k, counted(m, kind, include) / dense)
        return seen[k]

    first = at(lo)
    if first.fraction > budget:
        first.over_budget = True
        return first
    if at(hi).fraction <= budget:
        return at(hi)
    best = first
    a, b = lo, hi  # invariant: fraction(a) <= budget < fraction(b)
    for _ in range(steps):
        if integer and b - a <= 1:
            break
        mid = (a + b) // 2 if integer else (a + b) / 2
        if at(mid).fraction <= budget:
            a, best = mid, at(mid)
        else:
            b = mid
    return best


def apply_sized(method: Method, base: nn.Module, kind: str, budget: float | None, knob: float | None,
                dense: int, ctx: ApplyContext, include: Include = None) -> Sized:
    """The method applied at the knob, or at the knob the budget search picks.

    Merge cells are the exception: merging does not change parameter counts, so a merge budget
    is the method's knob itself (the fraction of task-vector mass it keeps) and is reached exactly."""
    if kind == "merge" and budget is not None and knob is None and method.knob is not None:
        knob = budget
    if method.knob is None or (budget is None and knob is None):
        m = method.apply(base, None, fresh(ctx))
        return Sized(m, None, counted(m, kind, include) / dense if kind != "merge" else 1.0)
    if knob is not None:
        k = int(knob) if method.knob.integer else knob
        m = method.apply(base, k, fresh(ctx))
        return Sized(m, k, (counted(m, kind, include) / dense) if kind != "merge" else float(k))
    return search(method, base, kind, budget, dense, ctx, include=include)


