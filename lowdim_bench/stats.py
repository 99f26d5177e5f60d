"""Statistics over seeds: confidence intervals, paired comparisons, seed counts.

Why our own Student-t: the harness needs one quantile and one tail probability, and scipy is
only an indirect dependency (through scikit-learn); the functions below are checked against
scipy in tests/test_stats.py where it is installed and against printed tables always.

Conventions (docs/reports.md, "Statistics"):
- A figure over seeds is the mean with a two-sided 95% interval `mean ± t(0.975, n-1) s / sqrt(n)`,
  s the sample standard deviation (ddof=1). With one seed there is no interval (NaN), never a
  made-up one, and `n` says so.
- Two methods (or two runs of one method) are compared *paired*: only seeds both have count,
  the interval and the test are on the per-seed differences `b - a`, which removes the
  seed-to-seed spread both share (same data split, same initialisation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import polars as pl

LEVEL = 0.95


# ---- Student's t distribution ---------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (inverse CDF), by bisection on t_sf to 1e-12."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    target = 1.0 - p  # find t with t_sf(t) = target
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > target:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            raise ArithmeticError(f"t quantile {p} with df={df} is beyond 1e12")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---- intervals ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """Mean of n values with a two-sided interval at `level`; low/high/half_width NaN when n < 2."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN when n < 2
    half_width: float
    level: float = LEVEL

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def overlaps(self, other: "Interval") -> bool:
        """Whether the two intervals share a point; an interval-less figure is its mean alone."""
        lo_a, hi_a = _bounds(self)
        lo_b, hi_b = _bounds(other)
        return lo_a <= hi_b and lo_b <= hi_a


def _bounds(i: Interval) -> tuple[float, float]:
    return (i.mean, i.mean) if math.isnan(i.half_width) else (i.low, i.high)


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and two-sided t interval of finite values (NaNs are dropped, not averaged)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, level)
    mean = sum(xs) / n
    if n < 2:
        return Interval(1, mean, math.nan, math.nan, level)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, half, level)


@dataclass(frozen=True)
class Paired:
    """b - a over the seeds both have: the mean difference, its interval and a two-sided t test."""

    seeds: tuple[int, ...]
    diff: Interval
    t: float  # NaN when n < 2; +-inf when every difference is the same non-zero value
    p_value: float  # two-sided; NaN when n < 2

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def significant(self) -> bool:
        """The interval of the mean difference excludes zero (p < 1 - level)."""
        return not math.isnan(self.p_value) and self.p_value < 1.0 - self.diff.level


def paired(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Paired:
    """Paired comparison of two figures keyed by seed, over their shared seeds."""
    seeds = tuple(sorted(s for s in set(a) & set(b) if _finite(a[s]) and _finite(b[s])))
    diffs = [float(b[s]) - float(a[s]) for s in seeds]
    ci = mean_ci(diffs, level)
    if ci.n < 2:
        return Paired(seeds, ci, math.nan, math.nan)
    if ci.std == 0.0:
        t = 0.0 if ci.mean == 0.0 else math.copysign(math.inf, ci.mean)
        return Paired(seeds, ci, t, 1.0 if ci.mean == 0.0 else 0.0)
    t = ci.mean / (ci.std / math.sqrt(ci.n))
    return Paired(seeds, ci, t, min(1.0, 2.0 * t_sf(abs(t), ci.n - 1)))


def _finite(v: float | None) -> bool:
    return v is not None and not math.isnan(float(v))


# ---- verdicts -------------------------------------------------------------------------------------
MIN_SEEDS = 3  # fewer shared seeds than this and a verdict is "inconclusive", whatever the interval says
HELD, NOT_HELD, INCONCLUSIVE, NOT_MEASURED = "held", "did not hold", "inconclusive", "not measured"


@dataclass(frozen=True)
class Verdict:
    """A claim's check over seeds: `margin` is, per shared seed, how far the claim is met
    (positive: met; e.g. a's accuracy minus b's); its mean, 95% interval and two-sided p-value
    (paired t test of margin = 0), and the verdict they support."""

    verdict: str
    n: int
    mean: float
    low: float
    high: float
    p_value: float
    reason: str = ""


def verdict(margins: Mapping[int, float] | Sequence[float], strict: bool = True, min_seeds: int = MIN_SEEDS,
            level: float = LEVEL) -> Verdict:
    """held / did not hold / inconclusive from the interval of the per-seed margins.

    Why an interval and not the sign of a mean: with 3 seeds a mean difference of half a point
    is routinely noise (paired p 0.2-0.3 on our first paper checks). held: the whole interval is
    above 0 (`strict`: a claim "a better than b") or at or above it (not strict: "no worse",
    "fewer", which an exact tie meets); did not hold: the whole interval is on the other side;
    inconclusive: the interval straddles the line, or fewer than `min_seeds` seeds. Margins
    that do not vary over seeds (parameter counts) give a zero-width interval: decided by sign.
    """
    values = list(margins.values()) if isinstance(margins, Mapping) else list(margins)
    values = [float(v) for v in values if _finite(v)]
    ci = mean_ci(values, level)
    n = ci.n
    if n == 0:
        return Verdict(NOT_MEASURED, 0, math.nan, math.nan, math.nan, math.nan, "no shared seed")
    if n < 2:
        low = high = p = math.nan
    elif ci.std == 0.0:
        low = high = ci.mean
        p = 1.0 if ci.mean == 0.0 else 0.0
    else:
        low, high = ci.low, ci.high
        t = ci.mean / (ci.std / math.sqrt(n))
        p = min(1.0, 2.0 * t_sf(abs(t), n - 1))
    if n < min_seeds:
        return Verdict(INCONCLUSIVE, n, ci.mean, low, high, p, f"{n} shared seed{'s' if n != 1 else ''}, "
                       f"need {min_seeds}")
    if (low > 0) if strict else (low >= 0):
        return Verdict(HELD, n, ci.mean, low, high, p)
    if (high <= 0) if strict else (high < 0):
        return Verdict(NOT_HELD, n, ci.mean, low, high, p)
    return Verdict(INCONCLUSIVE, n, ci.mean, low, high, p, f"the {level:.0%} interval contains 0")


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its checks': any "did not hold" decides it; then a check not
    measured, then an inconclusive one, leave it open; every check held: held."""
    for v in (NOT_HELD, NOT_MEASURED, INCONCLUSIVE):
        if v in verdicts:
            return v
    return HELD if verdicts else NOT_MEASURED


# ---- records ------------------------------------------------------------------------------------
def per_seed(df: pl.DataFrame, task: str, kind: str, method: str, metric: str = "quality",
             budget: float | None = None, knob: float | None = None) -> dict[int, float]:
    """{seed: value} of one metric of one method entry, from a run's records (ok records only;
    a seed's several records of the metric, e.g. phases, are averaged)."""
    sel = df.filter((pl.col("status") == "ok") & (pl.col("task") == task) & (pl.col("kind") == kind)
                    & (pl.col("method") == method) & (pl.col("metric") == metric))
    for col, want in (("budget", budget), ("knob", knob)):
        sel = sel.filter(pl.col(col).is_null() if want is None else pl.col(col) == want)
    if sel.is_empty():
        raise ValueError(f"no ok {metric!r} records for task={task!r} kind={kind!r} method={method!r} "
                         f"budget={budget} knob={knob}")
    out = sel.group_by("seed").agg(pl.col("value").mean())
    return {int(s): float(v) for s, v in out.iter_rows()}


def seed_counts(df: pl.DataFrame, metric: str = "quality") -> pl.DataFrame:
    """How many seeds stand behind each method entry's figure of `metric` (ok records only)."""
    return (df.filter((pl.col("status") == "ok") & (pl.col("metric") == metric))
            .group_by(["task", "kind", "method", "budget", "knob"])
            .agg(pl.col("seed").n_unique().alias("n_seeds"), pl.col("seed").unique().sort().alias("seeds"))
            .sort(["task", "kind", "method", "budget", "knob"], nulls_last=True))
