"""Scaling exponents: fit y ~ c x^a across a sweep of sizes, per method, from a run's records.

Papers state costs as powers ("O(|Omega| k) per round instead of O(|Omega| k^2)"); a benchmark
can check the power, not only the figure at one size. A suite lists fits (`[[scaling]]`): a
per-cell figure `y` against a per-cell figure `x` (a metric, or "knob") over the cells of some
task entries (one entry per size, e.g. three sampling rates) and methods. Each seed gives its
own least-squares line in log-log (3 sizes at least); the exponent is their mean with a 95% t
interval over seeds, so a verdict can say "inconclusive".

Checks compare two methods of a fit (noise-aware, at least MIN_SEEDS seeds shared, else
inconclusive; stats.paired over seeds, 95%):
- `below`: a's y is below b's at every size (the paired interval of log(y_b / y_a) above 0 at
  each size); "did not hold" when at some size it is significantly above;
- `exponent_below`: a's exponent below b's (paired interval of exponent_b - exponent_a above 0);
- `exponent_near`: a's exponent within `tolerance` of `value` (its interval inside the band).
`below` also reports where the pooled fits cross (the size past which the order flips), when they do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lowdim_bench import stats
from lowdim_bench.api import Analysis, AnalysisContext, AnalysisRecord, AnalysisResult, ConfigError, SuiteView
from lowdim_bench.hookspecs import hookimpl

RELATIONS = ("below", "exponent_below", "exponent_near")
MIN_SEEDS = 3  # fewer shared seeds: inconclusive (the claims rule)
MIN_SIZES = 3  # fewer sizes: no exponent
Finite = Annotated[float, Field(allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1, max_length=200)]


class _CheckModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    a: Text
    b: Text | None = None
    relation: Literal[RELATIONS] = "below"  # type: ignore[valid-type]
    value: Finite | None = None
    tolerance: Annotated[Finite, Field(ge=0)] = 0.0


class _FitModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Text
    text: Annotated[str, Field(max_length=2000)] = ""
    x: Text
    y: Text
    tasks: list[Text] | None = None
    methods: list[Text] | None = None
    kind: Text | None = None
    checks: list[_CheckModel] = []


def validate_fits(raw: Any, suite: SuiteView) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise ConfigError("expected an array of tables ([[scaling]])")
    out, names = [], set()
    for i, item in enumerate(raw):
        try:
            fit = _FitModel.model_validate(item)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            key = f"[{i}]" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            msg = {"extra_forbidden": "unknown field", "missing": "required field is missing"}.get(
                err["type"], f"{err['msg']} (got {str(err.get('input'))[:100]})")
            raise ConfigError(msg, key) from None
        if fit.name in names:
            raise ConfigError(f"fit name {fit.name!r} is used twice", f"[{i}].name")
        names.add(fit.name)
        for t in fit.tasks or []:
            if t not in suite.tasks:
                raise ConfigError(f"task {t!r} is not in the suite's tasks {list(suite.tasks)}", f"[{i}].tasks")
        methods = fit.methods or list(suite.entries)
        for m in methods:
            if m not in suite.entries:
                raise ConfigError(f"{m!r} names no method entry of the suite; entries: {sorted(suite.entries)}",
                                  f"[{i}].methods")
        for j, c in enumerate(fit.checks):
            for side in ("a", "b"):
                name = getattr(c, side)
                if name is not None and name not in methods:
                    raise ConfigError(f"{name!r} is not one of this fit's methods {methods}", f"[{i}].checks[{j}].{side}")
            if c.relation == "exponent_near" and c.value is None:
                raise ConfigError("relation 'exponent_near' needs `value` (the expected exponent)",
                                  f"[{i}].checks[{j}].value")
            if c.relation != "exponent_near" and c.b is None:
                raise ConfigError(f"relation {c.relation!r} needs `b` (the method to compare with)",
                                  f"[{i}].checks[{j}].b")
        out.append(fit.model_dump())
    return out


# ---- points and fits ---------------------------------------------------------------------------
def _size(budget: float | None, knob: float | None) -> str:
    """The summary's size label (lowdim_bench.report): budget, `knob N` or `full`."""
    if budget is not None and not math.isnan(budget):
        return f"{budget:g}"
    if knob is not None and not math.isnan(knob):
        return f"knob {knob:g}"
    return "full"


def _column(metric: str, phase: str | None) -> str:
    return f"{metric}[{phase}]" if phase else metric


@dataclass
class Point:
    method: str
    task: str
    size: str
    seed: int
    x: float
    y: float


def points(records: pl.DataFrame, fit: dict[str, Any]) -> list[Point]:
    """One point per ok cell of the fit's tasks and methods that has both figures (x, y > 0)."""
    df = records.filter((pl.col("status") == "ok") & pl.col("step").is_null() & pl.col("task").is_not_null()
                        & pl.col("method").is_not_null())
    if fit.get("tasks"):
        df = df.filter(pl.col("task").is_in(fit["tasks"]))
    if fit.get("methods"):
        df = df.filter(pl.col("method").is_in(fit["methods"]))
    if fit.get("kind"):
        df = df.filter(pl.col("kind") == fit["kind"])
    cells: dict[str, dict[str, Any]] = {}
    for r in df.select("cell_key", "task", "method", "seed", "budget", "knob", "metric", "phase", "value").iter_rows(
            named=True):
        c = cells.setdefault(r["cell_key"], {"task": r["task"], "method": r["method"], "seed": r["seed"],
                                             "size": _size(r["budget"], r["knob"]), "knob": r["knob"], "values": {}})
        c["values"].setdefault(_column(r["metric"], r["phase"]), []).append(r["value"])
    out = []
    for c in cells.values():
        def value(name: str) -> float | None:
            if name == "knob":
                return c["knob"]
            vs = [v for v in c["values"].get(name, []) if v is not None and not math.isnan(v)]
            return sum(vs) / len(vs) if vs else None
        x, y = value(fit["x"]), value(fit["y"])
        if x is not None and y is not None and x > 0 and y > 0:
            out.append(Point(c["method"], c["task"], c["size"], int(c["seed"]), float(x), float(y)))
    return out


@dataclass
class Line:
    exponent: float
    log_prefactor: float
    r2: float


def fit_line(xs: list[float], ys: list[float]) -> Line | None:
    """Least squares of log y on log x; None with fewer than MIN_SIZES distinct x."""
    lx, ly = np.log(np.asarray(xs)), np.log(np.asarray(ys))
    if len(set(np.round(lx, 12))) < MIN_SIZES:
        return None
    a, c = np.polyfit(lx, ly, 1)
    resid = ly - (a * lx + c)
    total = float(((ly - ly.mean()) ** 2).sum())
    return Line(float(a), float(c), 1.0 - float((resid**2).sum()) / total if total > 0 else 1.0)


@dataclass
class MethodFit:
    method: str
    per_seed: dict[int, float]  # seed -> exponent
    interval: stats.Interval
    pooled: Line | None
    sizes: int


def fit_methods(pts: list[Point], methods: list[str]) -> dict[str, MethodFit]:
    out = {}
    for m in methods:
        mine = [p for p in pts if p.method == m]
        per_seed = {}
        for seed in sorted({p.seed for p in mine}):
            line = fit_line([p.x for p in mine if p.seed == seed], [p.y for p in mine if p.seed == seed])
            if line is not None:
                per_seed[seed] = line.exponent
        out[m] = MethodFit(m, per_seed, stats.mean_ci(list(per_seed.values())),
                           fit_line([p.x for p in mine], [p.y for p in mine]), len({(p.task, p.size) for p in mine}))
    return out


# ---- checks ------------------------------------------------------------------------------------
def _verdict(low: float, high: float, n: int) -> bool | None:
    """Held when the interval is above 0, not held when below, else None (also below MIN_SEEDS)."""
    if n < MIN_SEEDS or math.isnan(low) or math.isnan(high):
        return None
    return True if low > 0 else False if high < 0 else None


def check_below(pts: list[Point], fits: dict[str, MethodFit], a: str, b: str) -> tuple[str, bool | None]:
    sizes = sorted({(p.task, p.size) for p in pts if p.method in (a, b)})
    parts, verdicts = [], []
    for task, size in sizes:
        ya = {p.seed: math.log(p.y) for p in pts if p.method == a and (p.task, p.size) == (task, size)}
        yb = {p.seed: math.log(p.y) for p in pts if p.method == b and (p.task, p.size) == (task, size)}
        pr = stats.paired(ya, yb)  # mean of log(y_b) - log(y_a): > 0 when a is below
        v = _verdict(pr.diff.low, pr.diff.high, pr.n)
        verdicts.append(v)
        ratio = math.exp(pr.diff.mean) if not math.isnan(pr.diff.mean) else math.nan
        parts.append(f"{task}@{size}: {b}/{a} {ratio:.3g}x (n={pr.n}, p={pr.p_value:.2g})")
    if not verdicts:
        return "no sizes with both methods", None
    held = False if any(v is False for v in verdicts) else (True if all(v is True for v in verdicts) else None)
    la, lb = fits[a].pooled, fits[b].pooled
    if la is not None and lb is not None and abs(la.exponent - lb.exponent) > 1e-9:
        cross = math.exp((lb.log_prefactor - la.log_prefactor) / (la.exponent - lb.exponent))
        parts.append(f"pooled fits cross at x = {cross:.3g}")
    return "; ".join(parts), held


def check_exponents(fits: dict[str, MethodFit], c: dict[str, Any]) -> tuple[str, bool | None]:
    fa = fits[c["a"]]
    if c["relation"] == "exponent_near":
        iv, lo, hi = fa.interval, c["value"] - c["tolerance"], c["value"] + c["tolerance"]
        text = f"{c['a']} exponent {iv.mean:.3g} [{iv.low:.3g}, {iv.high:.3g}] (n={iv.n}) vs {lo:.3g}..{hi:.3g}"
        if iv.n < MIN_SEEDS or math.isnan(iv.half_width):
            return text, None
        return text, True if lo <= iv.low and iv.high <= hi else False if iv.high < lo or iv.low > hi else None
    fb = fits[c["b"]]
    pr = stats.paired(fa.per_seed, fb.per_seed)  # exponent_b - exponent_a
    text = (f"{c['a']} {fa.interval.mean:.3g} vs {c['b']} {fb.interval.mean:.3g}: difference "
            f"{pr.diff.mean:.3g} [{pr.diff.low:.3g}, {pr.diff.high:.3g}] (n={pr.n}, p={pr.p_value:.2g})")
    return text, _verdict(pr.diff.low + c["tolerance"], pr.diff.high + c["tolerance"], pr.n)


def verdict_text(held: bool | None) -> str:
    return {True: "held", False: "did not hold", None: "inconclusive"}[held]


# ---- the analysis plugin -----------------------------------------------------------------------
COLUMNS = {"fit": pl.Utf8, "what": pl.Utf8, "method": pl.Utf8, "exponent": pl.Float64, "ci95_low": pl.Float64,
           "ci95_high": pl.Float64, "seeds": pl.Int64, "sizes": pl.Int64, "r2": pl.Float64, "check": pl.Utf8,
           "measured": pl.Utf8, "verdict": pl.Utf8}


class ScalingAnalysis(Analysis):
    name = "scaling"
    table = "scaling"
    description = "Scaling exponents y ~ x^a per method over a sweep of sizes, with noise-aware checks."

    def validate(self, raw: Any, suite: SuiteView) -> list[dict[str, Any]]:
        return validate_fits(raw, suite)

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        rows: list[dict[str, Any]] = []
        recs: list[AnalysisRecord] = []
        md = ["## Scaling", "", "| fit | method | exponent | 95% interval | seeds | sizes | R^2 (pooled) |",
              "|---|---|---|---|---|---|---|"]
        checks_md = []
        for fit in ctx.options:
            pts = points(ctx.records, fit)
            methods = fit.get("methods") or sorted({p.method for p in pts})
            fits = fit_methods(pts, methods)
            for m, f in fits.items():
                iv = f.interval
                rows.append({"fit": fit["name"], "what": "exponent", "method": m, "exponent": iv.mean,
                             "ci95_low": iv.low, "ci95_high": iv.high, "seeds": iv.n, "sizes": f.sizes,
                             "r2": f.pooled.r2 if f.pooled else None})
                md.append(f"| {fit['name']} | {m} | {iv.mean:.3g} | [{iv.low:.3g}, {iv.high:.3g}] | {iv.n} | {f.sizes} "
                          f"| {f.pooled.r2:.3f} |" if f.pooled else f"| {fit['name']} | {m} | - | - | {iv.n} | "
                          f"{f.sizes} | - |")
                recs += [AnalysisRecord("scaling_exponent", v, "", method=m, seed=s, phase=fit["name"])
                         for s, v in f.per_seed.items()]
                if not math.isnan(iv.mean):
                    recs.append(AnalysisRecord("scaling_exponent_mean", iv.mean, "", method=m, phase=fit["name"]))
            for c in fit.get("checks") or []:
                if c["relation"] == "below":
                    text, held = check_below(pts, fits, c["a"], c["b"])
                else:
                    text, held = check_exponents(fits, c)
                label = f"{c['a']} {c['relation']}" + (f" {c['b']}" if c.get("b") else f" {c['value']:g}")
                rows.append({"fit": fit["name"], "what": "check", "check": label, "measured": text,
                             "verdict": verdict_text(held)})
                checks_md.append(f"| {fit['name']} | {label} | {text} | {verdict_text(held)} |")
        if checks_md:
            md += ["", "| fit | check | measured | verdict |", "|---|---|---|---|", *checks_md]
        table = pl.DataFrame([{k: r.get(k) for k in COLUMNS} for r in rows], schema=COLUMNS)
        return AnalysisResult(table=table, markdown="\n".join(md) + "\n", records=recs)

    def render(self, table: pl.DataFrame) -> str:
        lines = ["scaling:"]
        for r in table.to_dicts():
            if r["what"] == "exponent":
                lines.append(f"  {r['fit']}: {r['method']} exponent {r['exponent']:.3g} "
                             f"[{r['ci95_low']:.3g}, {r['ci95_high']:.3g}] over {r['seeds']} seed(s), {r['sizes']} sizes")
            else:
                lines.append(f"  {r['verdict']:13} {r['fit']}: {r['check']}\n                {r['measured']}")
        return "\n".join(lines)


@hookimpl
def register_analyses(register) -> None:
    register(ScalingAnalysis)
