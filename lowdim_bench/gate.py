"""The regression gate: does NEW regress against BASE, per row and metric, beyond a tolerance?

`lowdim-bench compare BASE NEW --fail-on quality:-1%,latency_p50:+10%` exits 1 only when some
figure moved in its worse direction by more than its tolerance and, for noisy figures, the move
is statistically significant. docs/gate.md has the rules and why; in short:

- A tolerance `NAME:[+|-]X[%]` names a metric (`latency_p50`, all its phases and batch sizes),
  a column prefix (`latency_p50[inference]`, `latency_p50[inference]@bs64`) or a family
  (`flops` = every `flops_*` metric but per-module breakdowns). `%` makes X relative to BASE,
  without it X is in the metric's unit. The worse direction always comes from the records
  (quality: the task's `higher_is_better`; latency, memory, FLOPs: up), so `quality:-1%` guards
  accuracy and bits/byte alike; the sign is for the reader. `NAME:off` drops a tolerance,
  `default` expands to DEFAULT_SPEC, `none` clears the list.
- Latency is gated *relative to the reference*: each latency figure divided by the same run's
  reference entry (records with `reference` true: the suite's `reference`, dense by default) of
  the same task, kind, phase, batch size and seed, so a CI machine that is slower (or
  busier) as a whole passes; a method getting slower relative to dense fails.
- Noise: with two or more shared seeds, quality and latency must also differ significantly in a
  paired t test over seeds (95%; latency on log ratios). With one seed, quality is gated on the
  tolerance alone; interleaved latency must also exceed the noise band (the largest per-call
  p90/p50 of the method and its reference, BASE and NEW, at least NOISE_FLOOR); per-cell latency
  is shown, not gated,
  because the spread inside one process says nothing about the spread between processes.
  Beyond tolerance but not significant is `warn`, never a failure.
- Exact figures (FLOPs, tensor memory, parameters) are gated on the tolerance alone.
- A row of BASE that is missing from NEW, or whose cells failed in NEW, fails the gate.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable

import polars as pl

from . import report, stats

DEFAULT_SPEC = "quality:-1%,latency_p50:+10%,memory_peak:+5%,flops:+0%"
EPS = 1e-9  # relative slack so that float noise in exact figures is not a change
# Smallest noise band of a one-seed interleaved latency check (a ratio NEW/BASE). Measured: four
# smoke runs with identical code on a shared 2-core machine (load 10-16) moved interleaved
# dense-relative medians by up to x1.37 (72 comparisons); per-call p90/p50 alone was as low as 1.3.
NOISE_FLOOR = 1.5

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"  # warn: beyond tolerance, not significant
INTERLEAVED_PHASES = ("inference_interleaved",)  # lowdim_bench.run.interleave.PHASE (a test pins it)
TIMES = ("latency_p50", "latency_p90", "latency_p99")  # seconds: normalised by the dense reference


class GateSpecError(ValueError):
    """A --fail-on value that cannot be parsed; the message names the bad entry."""


@dataclass(frozen=True)
class Tolerance:
    selector: str  # metric name, column prefix or family, as written
    limit: float  # allowed change in the worse direction, >= 0
    relative: bool  # limit is a fraction of BASE (written with %)
    text: str  # as written, for messages

    def describe(self) -> str:
        return self.text.split(":", 1)[1]


_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9_.\-\[\]@]+):(?P<sign>[+-])?(?P<num>\d+(\.\d*)?|\.\d+)(?P<pct>%)?$")


def parse_spec(spec: str) -> list[Tolerance]:
    """`quality:-1%,latency_p50:+10%` -> tolerances, later entries replacing earlier ones."""
    out: dict[str, Tolerance] = {}
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if not entries:
        raise GateSpecError("empty --fail-on; give NAME:TOLERANCE entries, 'default' or 'none'")
    for entry in entries:
        if entry == "default":
            out.update({t.selector: t for t in parse_spec(DEFAULT_SPEC)})
            continue
        if entry == "none":
            out.clear()
            continue
        if entry.endswith(":off"):
            out.pop(entry[:-4], None)
            continue
        m = _ENTRY.match(entry)
        if not m:
            raise GateSpecError(f"--fail-on entry {entry!r}: expected NAME:[+|-]NUMBER[%] "
                                "(e.g. quality:-1%, latency_p50:+10%, flops:+0%), NAME:off, 'default' or 'none'")
        num = float(m["num"])
        pct = bool(m["pct"])
        out[m["name"]] = Tolerance(m["name"], num / 100 if pct else num, pct, entry)
    return list(out.values())


# ---- which columns a tolerance gates, and how -------------------------------------------------------
def metric_of(column: str) -> str:
    """`latency_p50[inference]@bs64` -> `latency_p50`."""
    return re.split(r"[\[@]", column, maxsplit=1)[0]


def selects(tol: Tolerance, column: str, metrics: set[str]) -> bool:
    """Exact metric name, a column prefix with phase/batch size, or a family (`flops` -> `flops_*`)
    when no metric has that exact name. A family leaves out per-module breakdowns
    (`flops_forward.body`): they are diagnostics that move whenever a module is renamed."""
    name = metric_of(column)
    sel = tol.selector
    if "[" in sel or "@" in sel:
        return column == sel or column.startswith(sel + "@") or (sel.endswith("]") and column.startswith(sel))
    if sel in metrics:
        return name == sel
    return name.startswith(sel + "_") and "." not in name


def is_latency(column: str) -> bool:
    """A time in seconds: gated relative to the run's dense reference."""
    return metric_of(column) in TIMES


def is_timing(column: str) -> bool:
    """Any timing figure (times and `latency_ratio`): noisy, gated with a significance rule."""
    return is_latency(column) or metric_of(column) == "latency_ratio"


def is_interleaved(column: str) -> bool:
    return any(f"[{p}]" in column for p in INTERLEAVED_PHASES)


def is_seed_noisy(column: str) -> bool:
    return metric_of(column) in ("quality", "quality_val")


def _spread_column(column: str) -> str:
    return column.replace(metric_of(column), "latency_spread", 1)


# ---- per-seed figures -----------------------------------------------------------------------------
KEY = report.GROUP  # task, kind, method, size


def per_seed_table(df: pl.DataFrame) -> pl.DataFrame:
    """ok records -> one row per (task, kind, method, size, seed, column) with its mean value."""
    df = report._with_size(df.filter((pl.col("status") == "ok") & pl.col("step").is_null()))
    df = df.with_columns(pl.struct(["metric", "phase", "batch_size"]).map_elements(
        lambda s: report.column_name(s["metric"], s["phase"], s["batch_size"]), return_dtype=pl.Utf8).alias("column"))
    return df.group_by(KEY + ["seed", "column"]).agg(pl.col("value").mean(), pl.col("higher_is_better").first(),
                                                     pl.col("reference").fill_null(False).any())


def _normalise_latency(t: pl.DataFrame) -> pl.DataFrame:
    """Latency columns divided by the reference entry of the same task/kind/column/seed; the rows
    that have no reference keep their seconds and say so (`normalised` false)."""
    lat = t.filter(pl.col("column").map_elements(is_latency, return_dtype=pl.Boolean))
    ref = lat.filter(pl.col("reference")).select("task", "kind", "seed", "column",
                                                             pl.col("value").alias("ref"))
    lat = lat.join(ref, on=["task", "kind", "seed", "column"], how="left")
    lat = lat.with_columns(pl.col("ref").is_not_null().alias("normalised"),
                           pl.when(pl.col("ref") > 0).then(pl.col("value") / pl.col("ref"))
                           .otherwise(pl.col("value")).alias("value")).drop("ref")
    rest = t.filter(~pl.col("column").map_elements(is_latency, return_dtype=pl.Boolean)).with_columns(
        pl.lit(False).alias("normalised"))
    return pl.concat([rest, lat.select(rest.columns)])


@dataclass
class RunView:
    """What the gate reads of one run: per-seed figures, the spreads, failed rows."""

    values: dict[tuple, dict[str, dict[int, float]]]  # row key -> column -> seed -> value
    normalised: dict[tuple, dict[str, bool]]
    direction: dict[tuple[str, str], bool | None]  # (task, column) -> higher_is_better
    raw: dict[tuple, dict[str, dict[int, float]]]  # un-normalised, for spreads
    failed: dict[tuple, str]  # row key -> first error line, rows with no ok seed
    refs: dict[tuple[str, str], tuple] = field(default_factory=dict)  # (task, kind) -> the reference row

    @classmethod
    def of(cls, df: pl.DataFrame) -> "RunView":
        base = per_seed_table(df) if not df.filter(pl.col("status") == "ok").is_empty() else None
        refs: dict = {}
        values: dict = {}
        raw: dict = {}
        normalised: dict = {}
        direction: dict = {}
        if base is not None:
            for r in base.iter_rows(named=True):
                raw.setdefault(_key(r), {}).setdefault(r["column"], {})[r["seed"]] = r["value"]
                if r["reference"]:
                    refs[(r["task"], r["kind"])] = _key(r)
            for r in _normalise_latency(base).iter_rows(named=True):
                k = _key(r)
                values.setdefault(k, {}).setdefault(r["column"], {})[r["seed"]] = r["value"]
                normalised.setdefault(k, {})[r["column"]] = r["normalised"]
                if r["higher_is_better"] is not None or (r["task"], r["column"]) not in direction:
                    direction[(r["task"], r["column"])] = r["higher_is_better"]
        failed = {}
        bad = report._with_size(df.filter(pl.col("status") == "failed"))
        for r in bad.iter_rows(named=True):
            k = _key(r)
            if k not in values:
                failed.setdefault(k, (r["error"] or "failed").splitlines()[0])
        return cls(values, normalised, direction, raw, failed, refs)


def _key(r: dict) -> tuple:
    return tuple(r[k] for k in KEY)


# ---- checks -----------------------------------------------------------------------------------------
@dataclass
class Check:
    """One row x metric of the verdict."""

    row: tuple  # task, kind, method, size
    column: str
    status: str  # pass, fail, skip
    reason: str
    base: float | None = None
    new: float | None = None
    change: float | None = None  # relative (tolerance with %) or absolute, signed, NEW vs BASE
    tolerance: str = ""
    seeds: int = 0
    p_value: float | None = None


@dataclass
class GateResult:
    checks: list[Check]
    notes: list[str] = field(default_factory=list)
    tolerances: list[Tolerance] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def passed(self) -> bool:
        return not self.failures


def _mean(d: dict[int, float]) -> float:
    vals = [v for v in d.values() if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _worse_sign(hib: bool | None) -> int | None:
    """+1 when up is worse, -1 when down is worse, None when the metric has no direction."""
    return None if hib is None else (-1 if hib else 1)


def _change(base: float, new: float, tol: Tolerance) -> float:
    if not tol.relative:
        return new - base
    if base == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return (new - base) / abs(base)


def _beyond(change: float, sign: int | None, tol: Tolerance) -> bool:
    worse = abs(change) if sign is None else sign * change
    slack = EPS if tol.relative else EPS * max(1.0, tol.limit)
    return worse > tol.limit + slack


def _noise_band(a: RunView, b: RunView, row: tuple, column: str, seed_a: int, seed_b: int) -> float | None:
    """Largest per-call p90/p50 among the figures a normalised latency is made of (None if absent);
    the caller raises it to NOISE_FLOOR.

    Meaningful only for figures timed interleaved: there the method and its reference share every
    slow spell, and what is left is per-call jitter. p90/p50 is a wide bound on it: for n = 20
    calls it is about four standard errors of a median."""
    task, kind = row[0], row[1]
    spreads = []
    sc = _spread_column(column)
    for view, seed in ((a, seed_a), (b, seed_b)):
        for key in (row, view.refs.get((task, kind))):
            v = view.raw.get(key, {}).get(sc, {}).get(seed)
            if v is not None and not math.isnan(v):
                spreads.append(v)
    return max(spreads) if spreads else None


def check_one(a: RunView, b: RunView, row: tuple, column: str, tol: Tolerance) -> Check:
    va, vb = a.values[row][column], b.values[row][column]
    shared = set(va) & set(vb)
    if shared:  # compare like with like: the seeds both runs have
        va, vb = {s: va[s] for s in shared}, {s: vb[s] for s in shared}
    base, new = _mean(va), _mean(vb)
    sign = _worse_sign(a.direction.get((row[0], column), b.direction.get((row[0], column))))
    norm = a.normalised.get(row, {}).get(column, False) and b.normalised.get(row, {}).get(column, False)
    unit = " (x reference)" if norm else ""
    chk = Check(row, column, PASS, "", base, new, None, tol.describe(), 0)
    if (norm or metric_of(column) == "latency_ratio") and row in (a.refs.get(row[:2]), b.refs.get(row[:2])):
        chk.status, chk.reason = SKIP, "the latency reference: other rows of its task/kind are gated relative to it"
        return chk
    if math.isnan(base) or math.isnan(new):
        chk.status, chk.reason = SKIP, "no finite value in BASE or NEW"
        return chk
    chk.change = _change(base, new, tol)
    shown = _fmt_change(chk.change, tol.relative)
    beyond = _beyond(chk.change, sign, tol)
    noisy = is_timing(column) or is_seed_noisy(column)
    pair = stats.paired(_log(va) if is_timing(column) else va, _log(vb) if is_timing(column) else vb)
    chk.seeds = pair.n if pair.n else min(len(va), len(vb))
    if noisy and pair.n >= 2:
        chk.p_value = pair.p_value
    if not beyond:
        chk.reason = f"{shown} within {tol.describe()}{unit}"
        return chk
    what = f"{column}{unit} {_fmt(base)} -> {_fmt(new)} ({shown}, tolerance {tol.describe()})"
    if not noisy:
        chk.status, chk.reason = FAIL, what
        return chk
    if pair.n >= 2:
        if pair.significant:
            chk.status, chk.reason = FAIL, f"{what}, significant over {pair.n} seeds (paired t, p={pair.p_value:.3g})"
        else:
            chk.status = WARN
            chk.reason = f"{shown} beyond {tol.describe()} but not significant over {pair.n} seeds (p={pair.p_value:.3g})"
        return chk
    few = "1 seed" if pair.n == 1 else f"{pair.n} shared seeds"
    if is_seed_noisy(column):
        chk.status, chk.reason = FAIL, f"{what}, {few}: tolerance only"
        return chk
    if not is_interleaved(column):
        chk.status = WARN
        chk.reason = (f"{shown} beyond {tol.describe()}, not gated: {few}, timed in its own process "
                      "(noise between processes unknown)")
        return chk
    band = _noise_band(a, b, row, column, next(iter(va)), next(iter(vb)))
    band = None if band is None else max(band, NOISE_FLOOR)
    ratio = new / base if base > 0 else math.inf
    worse_ratio = ratio if (sign or 1) > 0 else 1 / ratio if ratio > 0 else math.inf
    if band is None:
        chk.status, chk.reason = WARN, f"{shown} beyond {tol.describe()}, not gated: {few} and no spread recorded"
    elif worse_ratio > band:
        chk.status, chk.reason = FAIL, f"{what}, beyond the noise band x{band:.3g} ({few}, interleaved)"
    else:
        chk.status = WARN
        chk.reason = f"{shown} beyond {tol.describe()} but within the noise band x{band:.3g} ({few})"
    return chk


def _log(d: dict[int, float]) -> dict[int, float]:
    return {s: math.log(v) for s, v in d.items() if v is not None and v > 0}


def evaluate(base: pl.DataFrame, new: pl.DataFrame, tolerances: Iterable[Tolerance] | str = DEFAULT_SPEC) -> GateResult:
    """Every check of NEW against BASE under the tolerances (a spec string or parsed)."""
    tols = parse_spec(tolerances) if isinstance(tolerances, str) else list(tolerances)
    a, b = RunView.of(base), RunView.of(new)
    checks: list[Check] = []
    notes: list[str] = []
    metrics = {metric_of(c) for cols in list(a.values.values()) + list(b.values.values()) for c in cols}
    for t in tols:
        if not any(selects(t, c, metrics) for cols in a.values.values() for c in cols):
            notes.append(f"tolerance {t.text}: no such metric in BASE")
    for row in sorted(set(a.values) | set(a.failed), key=str):
        if row not in a.values:
            checks.append(Check(row, "cells", SKIP, f"failed in BASE: {a.failed[row]}"))
            continue
        if row not in b.values:
            why = f"failed in NEW: {b.failed[row]}" if row in b.failed else "missing from NEW"
            checks.append(Check(row, "cells", FAIL, why))
            continue
        for column in sorted(a.values[row]):
            tol = next((t for t in reversed(tols) if selects(t, column, metrics)), None)
            if tol is None:
                continue
            if column not in b.values[row]:
                checks.append(Check(row, column, FAIL, "metric missing from NEW", _mean(a.values[row][column]),
                                    tolerance=tol.describe()))
                continue
            checks.append(check_one(a, b, row, column, tol))
    for row in sorted(set(b.values) - set(a.values), key=str):
        checks.append(Check(row, "cells", SKIP, "new in NEW, no baseline"))
    one_seed = [c for c in checks if c.status != SKIP and (is_seed_noisy(c.column) or is_timing(c.column))
                and c.seeds < 2]
    if any(is_seed_noisy(c.column) for c in one_seed):
        notes.append("quality with fewer than 2 shared seeds: gated on the tolerance alone (no significance test)")
    if any(is_timing(c.column) and is_interleaved(c.column) for c in one_seed):
        notes.append("interleaved latency with 1 seed: a change must also exceed the noise band (largest "
                     f"per-call p90/p50 of the method and its reference, BASE and NEW; at least x{NOISE_FLOOR:g})")
    if any(is_timing(c.column) and not is_interleaved(c.column) for c in one_seed):
        notes.append("per-cell latency (each cell timed in its own process) with 1 seed: shown, not gated; "
                     "run 2 or more seeds for a paired test")
    if any(is_latency(c.column) and not a.normalised.get(c.row, {}).get(c.column) for c in checks
           if c.status != SKIP and c.column != "cells"):
        notes.append("some latency rows have no reference entry in their task/kind: gated in seconds")
    order = {FAIL: 0, WARN: 1, PASS: 2, SKIP: 3}
    checks.sort(key=lambda c: order[c.status])
    return GateResult(checks, notes, tols)


def _fmt(v: float | None) -> str:
    return report._fmt(v) if v is not None else "-"


def _fmt_change(change: float | None, relative: bool) -> str:
    if change is None or math.isnan(change):
        return "-"
    if math.isinf(change):
        return "+inf%" if change > 0 else "-inf%"
    return f"{change:+.2%}" if relative else f"{change:+.4g}"
