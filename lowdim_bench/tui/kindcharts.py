"""What the kind-specific charts draw, computed without Textual: merges and representations.

A merge row's quality is one number for a model that serves several members; what a reader of
the merging papers wants is how much of each member survived (FusionBench's normalised
quality, merged / individual) against how much of the task vectors the merge kept. The
representations analysis leaves one similarity per pair of method entries and hook point; a
grid of those per point is the figure of the convergent-learning and CKA papers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import fmt
from .chartdata import focus_group

NORMALISED = "quality_normalised"
RETAINED = "merge_retained"
SIMILARITY = ("linear_cka", "debiased_cka", "svcca", "match_corr", "semi_corr")  # first one present is shown


# ---- merges -----------------------------------------------------------------------------------------
@dataclass
class MergePoint:
    method: str
    size: str
    x: float  # fraction of task-vector entries kept
    y: float  # mean normalised quality over members (1 = every member as good as alone)
    selected: bool


@dataclass
class MergeView:
    task: str
    points: list[MergePoint]
    y_title: str


def member_qualities(row: Any) -> list[tuple[str, float]]:
    """(member, merged / individual quality) of a merge row, mean over seeds, in name order."""
    pre = f"{NORMALISED}["
    return sorted((c[len(pre):-1], v) for c, v in row.values.items()
                  if c.startswith(pre) and c.endswith("]") and "@bs" not in c and fmt.is_num(v))


def merge_view(rows: list[Any], selected: Any | None) -> MergeView | None:
    """Merge rows of the selected row's task (or the first task with merge rows) that measured
    both the retained mass and the normalised quality."""
    merges = [r for r in rows if r.group[1] == "merge"]
    if not merges:
        return None
    task = focus_group(merges, selected if selected is not None and selected.group[1] == "merge" else None)[0]
    points = []
    for r in merges:
        x, y = r.values.get(RETAINED), r.values.get(NORMALISED)
        if r.group[0] == task and fmt.is_num(x) and fmt.is_num(y):
            points.append(MergePoint(r.group[2], r.group[3], float(x), float(y), r is selected))
    return MergeView(task, points, "quality merged / individual, mean over members")


# ---- representation similarity ------------------------------------------------------------------------
@dataclass
class Grid:
    point: str  # the hook point ("fc1.in")
    entries: list[str]  # method entries ("lora@0.1"), rows and columns
    values: list[list[float | None]]  # values[i][j]; None where the pair was not measured


@dataclass
class HeatView:
    task: str
    measure: str
    grids: list[Grid] = field(default_factory=list)
    measures: list[str] = field(default_factory=list)  # every measure the records hold


_PAIR = re.compile(r"^(.+) \| (.+)$")


def _analysis_records(records: Iterable[dict[str, Any]]) -> list[tuple[str, str, str, str, str, float]]:
    """(task, measure, point, entry a, entry b, value) of the representation analysis's records."""
    out = []
    for r in records:
        metric, phase, v = str(r.get("metric") or ""), r.get("phase"), r.get("value")
        m = _PAIR.match(phase or "")
        if r.get("kind") is not None or not m or "." not in metric or not fmt.is_num(v):
            continue
        measure, point = metric.split(".", 1)
        out.append((r.get("task"), measure, point, m.group(1), m.group(2), float(v)))
    return out


def heat_view(records: Iterable[dict[str, Any]], task: str | None, measure: str | None = None) -> HeatView | None:
    """Symmetric grids (one per hook point, in record order) of one similarity measure for `task`
    (the first task with such records when it has none); the diagonal is the seed-to-seed value."""
    rows = _analysis_records(records)
    if not rows:
        return None
    tasks = list(dict.fromkeys(r[0] for r in rows))
    task = task if task in tasks else tasks[0]
    mine = [r for r in rows if r[0] == task]
    measures = list(dict.fromkeys(r[1] for r in mine))
    measure = measure if measure in measures else next((m for m in SIMILARITY if m in measures), measures[0])
    view = HeatView(task, measure, measures=measures)
    for point in dict.fromkeys(r[2] for r in mine if r[1] == measure):
        pairs = {(a, b): v for _, ms, p, a, b, v in mine if ms == measure and p == point}
        entries = sorted({e for ab in pairs for e in ab})
        values = [[pairs.get((a, b), pairs.get((b, a))) for b in entries] for a in entries]
        view.grids.append(Grid(point, entries, values))
    return view


def ramp(v: float | None) -> tuple[int, int, int] | None:
    """Similarity 0..1 as a colour from dark blue to yellow (viridis-like ends); None stays blank."""
    if v is None:
        return None
    t = min(1.0, max(0.0, v))
    lo, mid, hi = (68, 1, 84), (33, 145, 140), (253, 231, 37)
    a, b, u = (lo, mid, t * 2) if t < 0.5 else (mid, hi, t * 2 - 1)
    return tuple(round(x + (y - x) * u) for x, y in zip(a, b))
