"""Budget search: find the size knob whose applied model meets a parameter budget.

The budget is a fraction of the dense model's parameters: trainable ones for adapt, stored
ones otherwise. We count the real applied model (never a formula the method states).

Why from both sides: a knob moves the count in steps (FLoRA's rank-r Tucker core adds about
4 r^2 + r sum(I_n) at once), so "the largest knob within the budget" left FLoRA at 857 trainable
parameters against conv-LoRA's 1,107 at the same budget. `match` brackets the budget between
two adjacent knob values and takes the one whose count is closer to it (below on a tie), so
two methods at one budget differ by at most half of either's knob step; the signed mismatch
(reached - budget) is recorded with every cell. `search` keeps the old rule (never above).
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
    over_budget: bool = False  # even the smallest knob value is over the budget
    budget: float | None = None  # what was asked, when a budget was

    @property
    def mismatch(self) -> float | None:
        """reached - asked, as fractions of the dense count (None without a budget)."""
        return None if self.budget is None else self.fraction - self.budget


Include = Callable[[str], bool] | None


def counted(model: nn.Module, kind: str, include: Include = None) -> int:
    c = count_params(model, include)
    return c.trainable if kind == "adapt" else c.stored


def bracket(method: Method, base: nn.Module, kind: str, budget: float, dense: int, ctx: ApplyContext,
            steps: int = 24, include: Include = None) -> tuple[Sized, Sized | None]:
    """(below, above): the largest knob value within the budget and the next one tried above it
    (adjacent for integer knobs; within 2^-steps of the range for real ones). `below` is the
    smallest knob, flagged over budget, when nothing fits; `above` is None when the largest fits."""
    lo, hi = method.knob_range(base)
    integer = method.knob.integer
    seen: dict[float, Sized] = {}

    def at(k: float) -> Sized:
        if k not in seen:
            m = method.apply(base, k, fresh(ctx))
            seen[k] = Sized(m, k, counted(m, kind, include) / dense, budget=budget)
        return seen[k]

    first = at(lo)
    if first.fraction > budget:
        first.over_budget = True
        return first, None
    if at(hi).fraction <= budget:
        return at(hi), None
    a, b = lo, hi  # invariant: fraction(a) <= budget < fraction(b)
    for _ in range(steps):
        if integer and b - a <= 1:
            break
        mid = (a + b) // 2 if integer else (a + b) / 2
        if at(mid).fraction <= budget:
            a = mid
        else:
            b = mid
    return at(a), at(b)


def search(method: Method, base: nn.Module, kind: str, budget: float, dense: int, ctx: ApplyContext,
           steps: int = 24, include: Include = None) -> Sized:
    """The largest knob value whose count stays within the budget (never above it)."""
    return bracket(method, base, kind, budget, dense, ctx, steps, include)[0]


def match(method: Method, base: nn.Module, kind: str, budget: float, dense: int, ctx: ApplyContext,
          steps: int = 24, include: Include = None) -> Sized:
    """Of the two knob values around the budget, the one whose count is closer to it."""
    below, above = bracket(method, base, kind, budget, dense, ctx, steps, include)
    if above is not None and abs(above.fraction - budget) < abs(budget - below.fraction):
        return above
    return below


def apply_sized(method: Method, base: nn.Module, kind: str, budget: float | None, knob: float | None,
                dense: int, ctx: ApplyContext, include: Include = None) -> Sized:
    """The method applied at the knob, or at the knob the budget match picks (the closer side).

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
    return match(method, base, kind, budget, dense, ctx, include=include)


