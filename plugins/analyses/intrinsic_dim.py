"""The intrinsic-dimension measurement (Li et al. 2018): d_int90 from a run's records.

d_int90 of a task, kind and method entry is the smallest d (the cell's knob, the subspace
dimension) whose mean validation quality over seeds reaches `threshold` (0.9) of the baseline
entry's (the suite's reference, dense by default; the same task and kind, mean over its seeds). When no d tried reaches it, the
answer is "not reached": the reference code returns the largest d tried in that case, which
reads as a measurement when it is not.

Choices (docs/suites.md, docs/reports.md):
- higher-is-better quality (accuracy): reached when mean >= threshold * baseline;
- lower-is-better quality (bits/byte, loss): reached when mean <= baseline / threshold, i.e.
  within a factor 1/threshold of the baseline (bits/byte 2.0 -> target 2.22 at 0.9); a
  distance-from-chance definition would need a chance-level figure no task records;
- the metric is `quality_val` (validation split) by default, as in the paper; `quality` (test)
  may be chosen. Cells without the metric (failed ones) are left out and the seed count shows it;
- the baseline is every successful cell of the baseline entry for that task and kind, averaged
  per seed then over seeds.

The suite asks for it with a top-level `[intrinsic_dimension]` table (see `parse_options`), checked
before any cell runs; the run then writes d_int90.csv and a section of summary.md, and the CLI
prints the table. It is a built-in analysis plugin like any other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import polars as pl

from lowdim_bench.api import Analysis, AnalysisContext, AnalysisResult, ConfigError, SuiteView
from lowdim_bench.hookspecs import hookimpl

METRICS = ("quality_val", "quality")
DEFAULT_METHODS = ("intrinsic", "said")


@dataclass
class Options:
    """What to analyse: method entries (the suite's names), the baseline entry, the threshold."""

    methods: list[str]
    baseline: str
    threshold: float = 0.9
    metric: str = "quality_val"


@dataclass
class DimResult:
    task: str
    kind: str
    method: str
    d_int: int | None
    status: str  # reached | not reached | no baseline | no results
    baseline: float | None
    target: float | None
    higher_is_better: bool
    tried: list[tuple[int, float, int]] = field(default_factory=list)  # (d, mean quality, seeds)


def parse_options(value: Any, entries: list[tuple[str, str]], fail: Callable[[str | None, str], Exception],
                  default_baseline: str | None = None) -> Options:
    """Validate the suite's `[intrinsic_dimension]` table.

    entries: (shown name, registered method) of the suite's method entries. `methods` defaults
    to every entry of a registered `intrinsic` or `said` method. `fail(key, message)` builds
    the suite error (file, line, field).
    """
    if not isinstance(value, dict):
        raise fail(None, f"expected a table, got {value!r}")
    known = {"methods", "baseline", "threshold", "metric"}
    for key in value:
        if key not in known:
            raise fail(key, f"unknown field; expected one of {sorted(known)}")
    shown = [s for s, _ in entries]
    methods = value.get("methods", [s for s, m in entries if m in DEFAULT_METHODS])
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise fail("methods", f"expected a non-empty list of method entry names, got {methods!r}"
                   + ("" if "methods" in value else " (no intrinsic or said entry in the suite)"))
    for m in methods:
        if m not in shown:
            raise fail("methods", f"{m!r} is not a method entry of the suite; entries: {shown}")
    baseline = value.get("baseline", default_baseline)
    if baseline is None:
        raise fail("baseline", "name the baseline entry: the suite has no reference entry")
    if baseline not in shown:
        raise fail("baseline", f"{baseline!r} is not a method entry of the suite; entries: {shown}")
    threshold = value.get("threshold", 0.9)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise fail("threshold", f"expected a number in (0, 1], got {threshold!r}")
    metric = value.get("metric", "quality_val")
    if metric not in METRICS:
        raise fail("metric", f"expected one of {list(METRICS)}, got {metric!r}")
    return Options(methods=list(methods), baseline=baseline, threshold=float(threshold), metric=metric)


def _per_seed(df: pl.DataFrame, metric: str) -> pl.DataFrame:
    ok = df.filter((pl.col("status") == "ok") & (pl.col("metric") == metric) & pl.col("value").is_not_nan())
    return ok.group_by(["task", "kind", "method", "knob", "seed"]).agg(
        pl.col("value").mean(), pl.col("higher_is_better").first())


def analyse(df: pl.DataFrame, options: Options) -> list[DimResult]:
    """One DimResult per task, kind and analysed method entry present in the records."""
    if df.is_empty():
        return []
    seeds = _per_seed(df, options.metric)
    out: list[DimResult] = []
    groups = (df.filter(pl.col("method").is_in(options.methods)).select("task", "kind", "method")
              .unique().sort(["task", "kind", "method"]).iter_rows())
    for task, kind, method in groups:
        here = seeds.filter((pl.col("task") == task) & (pl.col("kind") == kind))
        base = here.filter(pl.col("method") == options.baseline)
        mine = here.filter((pl.col("method") == method) & pl.col("knob").is_not_null())
        hib_values = here["higher_is_better"].drop_nulls().to_list()
        hib = bool(hib_values[0]) if hib_values else True
        tried = [(int(d), float(v), int(n)) for d, v, n in mine.group_by("knob").agg(
            pl.col("value").mean(), pl.col("seed").n_unique()).sort("knob").iter_rows()]
        if base.is_empty():
            out.append(DimResult(task, kind, method, None, "no baseline", None, None, hib, tried))
            continue
        ref = float(base.group_by("seed").agg(pl.col("value").mean())["value"].mean())
        target = ref * options.threshold if hib else ref / options.threshold
        hit = [d for d, v, _ in tried if (v >= target if hib else v <= target)]
        status = "reached" if hit else ("not reached" if tried else "no results")
        out.append(DimResult(task, kind, method, min(hit) if hit else None, status, ref, target, hib, tried))
    return out


def _num(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _tried(r: DimResult) -> str:
    return " ".join(f"{d}:{_num(v)}({n})" for d, v, n in r.tried) or "-"


def _answer(r: DimResult) -> str:
    return str(r.d_int) if r.d_int is not None else r.status


HEADERS = ["task", "kind", "method", "d_int", "baseline", "target", "tried d:quality(seeds)"]


def rows(results: list[DimResult]) -> list[list[str]]:
    return [[r.task, r.kind, r.method, _answer(r), _num(r.baseline), _num(r.target), _tried(r)] for r in results]


def to_frame(results: list[DimResult], threshold: float) -> pl.DataFrame:
    return pl.DataFrame({
        "threshold": [threshold] * len(results),
        "task": [r.task for r in results], "kind": [r.kind for r in results],
        "method": [r.method for r in results], "d_int": [r.d_int for r in results],
        "status": [r.status for r in results], "baseline": [r.baseline for r in results],
        "target": [r.target for r in results], "higher_is_better": [r.higher_is_better for r in results],
        "tried": [_tried(r) for r in results],
    }, schema={"threshold": pl.Float64, "task": pl.Utf8, "kind": pl.Utf8, "method": pl.Utf8, "d_int": pl.Int64, "status": pl.Utf8,
               "baseline": pl.Float64, "target": pl.Float64, "higher_is_better": pl.Boolean, "tried": pl.Utf8})


def render_markdown(results: list[DimResult], options: Options) -> str:
    head = HEADERS[:3] + [f"d_int{round(options.threshold * 100)}"] + HEADERS[4:]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows(results)]
    note = (f"\nSmallest d whose mean {options.metric} over seeds reaches {options.threshold:g} of "
            f"`{options.baseline}` (same task and kind); lower-is-better metrics: at most baseline / "
            f"{options.threshold:g}. \"not reached\": no d tried did.\n")
    return "\n".join(out) + "\n" + note


def render_table(frame: pl.DataFrame) -> str:
    """The CLI table, from d_int90.csv's frame."""
    body = [[str(r["task"]), str(r["kind"]), str(r["method"]),
             str(r["d_int"]) if r["d_int"] is not None else str(r["status"]),
             _num(r["baseline"]), _num(r["target"]), str(r["tried"])] for r in frame.to_dicts()]
    headers = list(HEADERS)
    if len(frame):
        headers[3] = f"d_int{round(float(frame['threshold'][0]) * 100)}"
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(b) for b in body])


class IntrinsicDimension(Analysis):
    """`[intrinsic_dimension]` in a suite: d_int90 per task, kind and method entry."""

    name = "d_int90"
    table = "intrinsic_dimension"
    description = "Li et al.'s intrinsic dimension: the smallest subspace d reaching 90% of the baseline's quality."

    def validate(self, raw: Any, suite: SuiteView) -> dict[str, Any]:
        def fail(key: str | None, msg: str) -> ConfigError:
            return ConfigError(msg, key)

        entries = list(suite.entries.items())
        return vars(parse_options(raw, entries, fail, default_baseline=suite.reference))

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        options = Options(**ctx.options)
        results = analyse(ctx.records, options)
        return AnalysisResult(table=to_frame(results, options.threshold),
                              markdown="## Intrinsic dimension\n\n" + render_markdown(results, options))

    def render(self, table: pl.DataFrame) -> str:
        return "intrinsic dimension (d_int):\n" + render_table(table)


@hookimpl
def register_analyses(register) -> None:
    register(IntrinsicDimension)
