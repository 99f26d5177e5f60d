"""What each chart draws, computed without Textual or plotext: points, fronts, ranges, ticks, colours.

The charts only translate these views into plotext calls, so what a chart shows is tested here
without reading pixels. Axes are transformed here too (log10 for parameters, log2 for batch
sizes) and the ticks are placed at round values of the original scale (1k, 10k; 1, 2, 4, 8):
plotext's own log axis labels ticks at arbitrary values (2344.0 4282.7 7825.0).

A Pareto chart shows one task and kind at a time (the selected row's): fronts are computed
within a task and kind, quality scales differ between tasks, and parameter counts mean
different things per kind (trainable for adapt, stored otherwise).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from . import fmt
from .table import inference_p50

# Distinct on dark and light backgrounds (Okabe-Ito, then lighter tones); a method keeps its
# colour in every chart and in the legend. The front is drawn in FRONT_COLOR, never a method's.
PALETTE = [(86, 180, 233), (230, 159, 0), (0, 158, 115), (240, 228, 66), (204, 121, 167), (213, 94, 0),
           (150, 150, 255), (140, 220, 140), (255, 140, 140), (0, 200, 200), (200, 160, 100), (180, 100, 255)]
FRONT_COLOR = (200, 200, 200)
MEMORY_PARTS = ["parameters", "gradients", "optimizer", "activations"]
MEMORY_COLORS = [(86, 180, 233), (230, 159, 0), (204, 121, 167), (0, 158, 115)]


def rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def method_colors(rows: list[Any]) -> dict[str, tuple[int, int, int]]:
    """Method -> colour, by sorted method name over every row given (stable while filtering)."""
    names = sorted({r.group[2] for r in rows})
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(names)}


# ---- ticks ------------------------------------------------------------------------------------------
def log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Ticks (as log10 positions) at round values between lo and hi: powers of ten, and 2 and 5
    times them when the range spans less than two decades."""
    if lo <= 0 or hi <= 0:
        return [], []
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1,) if b - a > 2 else (1, 2, 5)
    vals = [m * 10.0**e for e in range(a, b + 1) for m in steps]
    inside = [v for v in vals if lo / 1.0001 <= v <= hi * 1.0001]
    if len(inside) < 2:  # a narrow range: the nearest round values on each side
        below = [v for v in vals if v <= lo] or [vals[0]]
        above = [v for v in vals if v >= hi] or [vals[-1]]
        inside = sorted({below[-1], *inside, above[0]})
    return [math.log10(v) for v in inside], [fmt.count(v) for v in inside]


def nice_step(span: float, n: int) -> float:
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), 10 * mag)


def nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[list[float], list[str]]:
    """Linear ticks at multiples of 1, 2, 2.5 or 5 x 10^k covering [lo, hi], labels without
    needless digits (0.8, 0.85, 0.9 rather than 0.8467)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [], []
    if hi - lo <= 0:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, n)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(v, 12))
        v += step
    ticks.append(round(v, 12)) if ticks and ticks[-1] < hi else None
    half = str(step).rstrip("0").endswith("5") and step < 1  # 0.25 needs two decimals, 0.2 one
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if half else 0)
    return ticks, [f"{t:.{decimals}f}" for t in ticks]


def axis_range(ticks: list[float], lo: float, hi: float, pad: float = 0.0) -> tuple[float, float]:
    """An axis that holds every point (lo..hi) and every tick, widened by `pad` of its span."""
    lo, hi = min([lo, *ticks]), max([hi, *ticks])
    span = (hi - lo) or 1.0
    return lo - pad * span, hi + pad * span


def log2_ticks(sizes: list[int]) -> tuple[list[float], list[str]]:
    """Batch sizes on a log-2 axis: a tick at every power of two between the smallest and largest."""
    if not sizes:
        return [], []
    a, b = math.floor(math.log2(min(sizes))), math.ceil(math.log2(max(sizes)))
    step = max(1, math.ceil((b - a + 1) / 8))
    pos = list(range(a, b + 1, step))
    return [float(p) for p in pos], [str(2**p) for p in pos]


# ---- groups -----------------------------------------------------------------------------------------
def groups(rows: list[Any]) -> list[tuple[str, str]]:
    """(task, kind) pairs in table order."""
    return list(dict.fromkeys(r.group[:2] for r in rows))


def focus_group(rows: list[Any], selected: Any | None) -> tuple[str, str] | None:
    if selected is not None and selected.group[:2] in groups(rows):
        return selected.group[:2]
    return groups(rows)[0] if rows else None


def units_of(row: Any) -> dict[str, str]:
    try:
        return json.loads(row.values.get("units") or "{}")
    except (TypeError, ValueError):
        return {}


def params_column(kind: str) -> str:
    """The parameter count budgets and the front use: trainable for adapt, stored otherwise."""
    return "params_trainable" if kind == "adapt" else "params_stored"


def params_of(row: Any) -> float | None:
    return row.values.get(params_column(row.group[1]))


def smallest_batch_latency(row: Any) -> float | None:
    """p50 in ms at the row's smallest inference batch size."""
    pts = batch_latencies(row)
    return pts[0][1] if pts else None


def batch_latencies(row: Any) -> list[tuple[int, float]]:
    """(batch size, p50 ms): the cell's own timing, else the interleaved pass's (table.inference_p50)."""
    present = [c for c, v in row.values.items() if fmt.is_num(v)]
    return [(int(c.rsplit("@bs", 1)[1]), row.values[c] * 1e3) for c in inference_p50(present)]


# ---- quality vs a cost --------------------------------------------------------------------------------
@dataclass
class Point:
    method: str
    size: str
    x: float  # original scale (parameters, ms)
    y: float
    ci: float | None  # 95% half-width of the quality mean, None with one seed
    front: bool
    tie: bool
    selected: bool

    @property
    def label(self) -> str:
        return f"{self.method} {self.size}"


@dataclass
class QualityView:
    task: str
    kind: str
    title: str
    x_title: str
    y_title: str
    log_x: bool
    points: list[Point]
    front: list[tuple[float, float]]  # the front's points sorted by x (original scale)
    others: list[tuple[str, str]] = field(default_factory=list)  # other task/kind groups

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(p.method for p in self.points))

    def ranges(self) -> list[Point]:
        """Points drawn with their 95% interval: ties, and the front points they tie with."""
        if not any(p.tie for p in self.points):
            return []
        return [p for p in self.points if (p.tie or p.front) and p.ci]


def quality_axis_title(rows: list[Any]) -> str:
    hib = next((r.values.get("higher_is_better") for r in rows if r.values.get("higher_is_better") is not None), None)
    unit = next((units_of(r).get("quality") for r in rows if units_of(r).get("quality")), "")
    direction = "" if hib is None else (", higher is better" if hib else ", lower is better")
    return f"quality ({unit}{direction})" if unit or direction else "quality"


def quality_view(rows: list[Any], selected: Any | None, cost: str) -> QualityView | None:
    """The Pareto chart of the selected row's task and kind; `cost` is "params" or "latency"."""
    key = focus_group(rows, selected)
    if key is None:
        return None
    task, kind = key
    mine = [r for r in rows if r.group[:2] == key]
    if cost == "params":
        x_of: Callable[[Any], float | None] = params_of
        what = "trainable" if kind == "adapt" else "stored"
        x_title, title = f"{what} parameters (count, log scale)", f"quality vs {what} parameters"
    else:
        x_of = smallest_batch_latency
        bs = min((b for r in mine for b, _ in batch_latencies(r)), default=None)
        x_title, title = f"inference latency p50 (ms, batch {bs})", "quality vs latency"
    points = []
    for r in mine:
        x, q = x_of(r), r.values.get("quality")
        if not (fmt.is_num(x) and fmt.is_num(q)) or x <= 0:
            continue
        ci = r.values.get("quality_ci95")
        front = bool(r.values.get("pareto")) if cost == "params" else False
        points.append(Point(r.group[2], r.group[3], float(x), float(q), ci if fmt.is_num(ci) else None, front,
                            bool(r.values.get("pareto_tie")) and cost == "params",
                            selected is not None and r.group == selected.group))
    if cost == "latency":
        mark_front(points, higher_is_better=next((r.values.get("higher_is_better") for r in mine), True) is not False)
    xs = [p.x for p in points]
    log_x = cost == "params" or (bool(xs) and max(xs) / min(xs) > 20)
    front = sorted((p.x, p.y) for p in points if p.front)
    return QualityView(task, kind, f"{task} · {kind}: {title}", x_title, quality_axis_title(mine), log_x, points,
                       front if len(points) > 1 else [], [g for g in groups(rows) if g != key])


def mark_front(points: list[Point], higher_is_better: bool = True) -> None:
    """Non-dominated points: no other point is at most as costly and at least as good."""
    sign = 1 if higher_is_better else -1
    for p in points:
        p.front = not any(o is not p and o.x <= p.x and sign * o.y >= sign * p.y
                          and (o.x < p.x or sign * o.y > sign * p.y) for o in points)


# ---- memory -----------------------------------------------------------------------------------------
@dataclass
class MemoryView:
    task: str
    labels: list[str]
    parts: dict[str, list[float]]  # part -> MiB per label

    @property
    def totals(self) -> list[float]:
        return [sum(vals) for vals in zip(*self.parts.values())] if self.labels else []


def memory_parts(row: Any) -> list[float | None]:
    return [next((v for c, v in row.values.items() if c.startswith(f"memory_{p}[train_step]") and fmt.is_num(v)), None)
            for p in MEMORY_PARTS]


def memory_view(rows: list[Any], selected: Any | None) -> MemoryView | None:
    """One stacked bar per row of the selected row's task (every kind), MiB of one training step."""
    key = focus_group(rows, selected)
    if key is None:
        return None
    labels, parts = [], {p: [] for p in MEMORY_PARTS}
    for r in rows:
        if r.group[0] != key[0]:
            continue
        vals = memory_parts(r)
        if all(v is None for v in vals):
            continue
        labels.append(f"{r.group[2]} {r.group[3]} ({r.group[1]})")
        for p, v in zip(MEMORY_PARTS, vals):
            parts[p].append((v or 0.0) / 2**20)
    return MemoryView(key[0], labels, parts)


# ---- latency by batch ---------------------------------------------------------------------------------
@dataclass
class Line:
    method: str
    label: str
    batch: list[int]
    ms: list[float]
    selected: bool


@dataclass
class BatchView:
    task: str
    kind: str
    lines: list[Line]

    @property
    def sizes(self) -> list[int]:
        return sorted({b for line in self.lines for b in line.batch})


def batch_view(rows: list[Any], selected: Any | None) -> BatchView | None:
    """p50 per batch size of every row of the selected row's task and kind."""
    key = focus_group(rows, selected)
    if key is None:
        return None
    lines = []
    for r in rows:
        if r.group[:2] != key:
            continue
        pts = batch_latencies(r)
        if pts:
            lines.append(Line(r.group[2], f"{r.group[2]} {r.group[3]}", [b for b, _ in pts], [v for _, v in pts],
                              selected is not None and r.group == selected.group))
    return BatchView(key[0], key[1], lines)
