"""Paper claims checked against a run: did the paper's qualitative claim hold here?

A suite lists claims (`[[claims]]`), each with checks comparing two rows of the run (a method
entry at a size, on the claim's task or, with "task/entry@size", on another) on one metric.
Why per seed and not on the summary's means: three seeds routinely put a noise-sized difference
on either side of zero (paired p 0.2-0.3 on the first paper checks), so each check is decided on
the per-seed margins over the seeds both rows share: a paired 95% interval, a p-value, and
held / did not hold / inconclusive (`lowdim_bench.stats.verdict`; fewer than 3 shared seeds is
inconclusive). Each check also states the parameter counts of its two rows and their mismatch,
and `max_mismatch` makes a check inconclusive when they are further apart than that.
The run writes claims.csv (one row per check) and a section of summary.md; docs/suites.md
documents the format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lowdim_bench import report, stats
from lowdim_bench.api import KINDS, Analysis, AnalysisContext, AnalysisResult, ConfigError, SuiteView
from lowdim_bench.hookspecs import hookimpl

RELATIONS = ("better", "not_worse", "fewer")
STRICT = {"better": True, "not_worse": False, "fewer": False}


@dataclass
class Check:
    """`a` and `b` are "entry@size" (size as the summary shows it: 0.1, knob 4, full), or
    "task/entry@size" for a row of another task of the suite.

    better: a's metric is better than b's (direction: the records' for the metric, else lower);
    not_worse: a is no worse than b by more than `tolerance` (relative, e.g. 0.02 = 2%);
    fewer: a's metric is at most b's divided by `factor` (e.g. trainable parameters, 16x fewer).
    max_mismatch: the largest relative difference in parameters (trainable for adapt, stored
    otherwise) at which the comparison counts as one at equal parameters (None: any, but said).
    """

    a: str
    b: str
    metric: str = "quality"
    relation: str = "better"
    tolerance: float = 0.0
    factor: float = 1.0
    max_mismatch: float | None = None


@dataclass
class Claim:
    name: str
    text: str
    task: str
    kind: str | None = None
    checks: list[Check] = field(default_factory=list)


@dataclass
class CheckResult:
    check: Check
    measured: str
    verdict: stats.Verdict
    mean_a: float = math.nan
    mean_b: float = math.nan
    params_a: float = math.nan
    params_b: float = math.nan

    @property
    def mismatch(self) -> float:
        """params_a / params_b - 1 (NaN when either is unknown)."""
        if math.isnan(self.params_a) or math.isnan(self.params_b) or self.params_b == 0:
            return math.nan
        return self.params_a / self.params_b - 1.0


@dataclass
class ClaimResult:
    name: str
    text: str
    checks: list[CheckResult]

    @property
    def verdict(self) -> str:
        return stats.combine([c.verdict.verdict for c in self.checks])

    @property
    def measured(self) -> str:
        return "; ".join(c.measured for c in self.checks)


def from_dict(d: dict[str, Any]) -> Claim:
    """A claim as stored in run.json (dataclasses.asdict form)."""
    return Claim(name=d["name"], text=d["text"], task=d["task"], kind=d.get("kind"),
                 checks=[Check(**c) for c in d.get("checks", [])])


def parse_ref(ref: str) -> tuple[str | None, str, str]:
    """"task/entry@size" -> (task or None, entry, size); size "full" when not given."""
    task, slash, rest = ref.partition("/")
    if not slash:
        task, rest = None, ref
    method, _, size = rest.partition("@")
    return (task.strip() if task else None), method.strip(), (size.strip() or "full")


# ---- evaluation ---------------------------------------------------------------------------------
class _Rows:
    """The run's summary and per-seed figures, looked up by (task, kind, entry, size)."""

    def __init__(self, summary: pl.DataFrame, seeds: pl.DataFrame, directions: dict[str, bool]) -> None:
        self.summary, self.seeds, self.directions = summary, seeds, directions

    def row(self, claim: Claim, ref: str) -> dict[str, Any] | None:
        task, method, size = parse_ref(ref)
        if self.summary.is_empty() or "size" not in self.summary.columns:
            return None
        cond = (pl.col("task") == (task or claim.task)) & (pl.col("method") == method) & (pl.col("size") == size)
        if claim.kind:
            cond &= pl.col("kind") == claim.kind
        rows = self.summary.filter(cond).to_dicts()
        return rows[0] if rows else None

    def values(self, row: dict[str, Any], column: str) -> dict[int, float]:
        if self.seeds.is_empty():
            return {}
        sel = self.seeds.filter((pl.col("task") == row["task"]) & (pl.col("kind") == row["kind"])
                                & (pl.col("method") == row["method"]) & (pl.col("size") == row["size"])
                                & (pl.col("column") == column))
        return {int(s): float(v) for s, v in sel.select("seed", "value").iter_rows() if v is not None}

    def sign(self, column: str, row: dict[str, Any]) -> int:
        """+1 when higher is better for this figure, -1 when lower is (also when unknown: a cost)."""
        if column.startswith("quality"):
            return -1 if row.get("higher_is_better") is False else 1
        return 1 if self.directions.get(column) is True else -1


def _params_column(kind: str | None) -> str:
    return "params_trainable" if kind == "adapt" else "params_stored"


def _margins(check: Check, a: dict[int, float], b: dict[int, float], sign: int) -> dict[int, float]:
    """Per shared seed, how far the claim is met (>= 0 met, > 0 strictly)."""
    out = {}
    for s in sorted(set(a) & set(b)):
        va, vb = a[s], b[s]
        if check.relation == "better":
            out[s] = sign * (va - vb)
        elif check.relation == "not_worse":
            out[s] = sign * (va - vb) + check.tolerance * abs(vb)
        elif check.relation == "fewer":
            out[s] = vb - check.factor * va
        else:
            raise ValueError(f"unknown relation {check.relation!r}; expected one of {RELATIONS}")
    return out


def _g(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def evaluate_check(rows: _Rows, claim: Claim, check: Check) -> CheckResult:
    ra, rb = rows.row(claim, check.a), rows.row(claim, check.b)
    missing = [ref for ref, r in ((check.a, ra), (check.b, rb)) if r is None or r.get(check.metric) is None]
    if missing:
        v = stats.Verdict(stats.NOT_MEASURED, 0, math.nan, math.nan, math.nan, math.nan, "no result")
        return CheckResult(check, f"{check.metric}: no result for {', '.join(missing)}", v)
    va, vb = rows.values(ra, check.metric), rows.values(rb, check.metric)
    v = stats.verdict(_margins(check, va, vb, rows.sign(check.metric, ra)), strict=STRICT[check.relation])
    res = CheckResult(check, "", v, float(ra[check.metric]), float(rb[check.metric]))
    pcol = _params_column(ra.get("kind"))
    if not check.metric.startswith("params"):
        res.params_a = float(ra[pcol]) if ra.get(pcol) is not None else math.nan
        res.params_b = float(rb[pcol]) if rb.get(pcol) is not None else math.nan
    if (check.max_mismatch is not None and v.verdict != stats.NOT_MEASURED and not math.isnan(res.mismatch)
            and abs(res.mismatch) > check.max_mismatch):
        res.verdict = stats.Verdict(stats.INCONCLUSIVE, v.n, v.mean, v.low, v.high, v.p_value,
                                    f"parameters differ by {res.mismatch:+.1%} (> {check.max_mismatch:.0%})")
    detail = f" x{check.factor:g}" if check.relation == "fewer" else (
        f" (tol {check.tolerance:.0%})" if check.relation == "not_worse" else "")
    text = f"{check.metric}: {check.a} {_g(res.mean_a)} vs {check.b} {_g(res.mean_b)}, {check.relation}{detail}"
    if not math.isnan(res.mismatch):
        text += f" at {pcol.split('_')[1]} params {res.params_a:.0f} vs {res.params_b:.0f} ({res.mismatch:+.1%})"
    res.measured = text
    return res


def evaluate(summary: pl.DataFrame, claims: list[Claim], records: pl.DataFrame | None = None) -> list[ClaimResult]:
    """Each claim's checks on a run: `summary` for the rows' means and parameter counts, the
    run's `records` for the per-seed figures (without them every check has no seeds: inconclusive)."""
    seeds = report.per_seed(records) if records is not None else pl.DataFrame()
    directions: dict[str, bool] = {}
    if records is not None and not records.is_empty():
        known = records.filter(pl.col("higher_is_better").is_not_null() & (pl.col("status") == "ok"))
        for metric, phase, bs, hib in known.select("metric", "phase", "batch_size", "higher_is_better").unique().iter_rows():
            directions[report.column_name(metric, phase, bs)] = bool(hib)
    rows = _Rows(summary, seeds, directions)
    return [ClaimResult(c.name, c.text, [evaluate_check(rows, c, k) for k in c.checks]) for c in claims]


# ---- output -------------------------------------------------------------------------------------
def _interval(v: stats.Verdict) -> str:
    if v.n == 0 or math.isnan(v.mean):
        return "-"
    if math.isnan(v.low):
        return f"{v.mean:+.4g}"
    return f"{v.mean:+.4g} [{v.low:+.4g}, {v.high:+.4g}]"


def _p(v: stats.Verdict) -> str:
    return "-" if math.isnan(v.p_value) else f"{v.p_value:.2g}"


def _check_verdict(c: CheckResult) -> str:
    return c.verdict.verdict + (f" ({c.verdict.reason})" if c.verdict.reason and c.verdict.verdict != stats.HELD else "")


def render_markdown(results: list[ClaimResult]) -> str:
    lines = ["| claim | paper says | measured here | margin [95% interval] | p | seeds | check | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for i, c in enumerate(r.checks):
            head = (r.name, r.text) if i == 0 else ("", "")
            lines.append(f"| {head[0]} | {head[1]} | {c.measured} | {_interval(c.verdict)} | {_p(c.verdict)} | "
                         f"{c.verdict.n} | {_check_verdict(c)} | {r.verdict if i == 0 else ''} |")
    note = ("\nmargin: per shared seed, how far the claim is met (better: a minus b in the metric's better "
            "direction; not_worse: that plus the tolerance times b; fewer: b minus factor times a); its mean and "
            "paired 95% t interval; p: two-sided paired t test of margin = 0. A check holds when the interval "
            f"is above 0, fails when it is below, and is inconclusive otherwise or with fewer than "
            f"{stats.MIN_SEEDS} shared seeds.\n")
    return "\n".join(lines) + "\n" + note


COLUMNS = {"claim": pl.Utf8, "paper": pl.Utf8, "check": pl.Int64, "a": pl.Utf8, "b": pl.Utf8, "metric": pl.Utf8,
           "relation": pl.Utf8, "mean_a": pl.Float64, "mean_b": pl.Float64, "margin": pl.Float64, "low": pl.Float64,
           "high": pl.Float64, "p": pl.Float64, "n_seeds": pl.Int64, "params_a": pl.Float64, "params_b": pl.Float64,
           "param_mismatch": pl.Float64, "measured": pl.Utf8, "check_verdict": pl.Utf8, "reason": pl.Utf8,
           "verdict": pl.Utf8}


def to_frame(results: list[ClaimResult]) -> pl.DataFrame:
    """One row per check; `verdict` is the claim's (repeated on each of its checks)."""
    rows = []
    for r in results:
        for i, c in enumerate(r.checks):
            v = c.verdict
            rows.append({"claim": r.name, "paper": r.text, "check": i + 1, "a": c.check.a, "b": c.check.b,
                         "metric": c.check.metric, "relation": c.check.relation, "mean_a": c.mean_a,
                         "mean_b": c.mean_b, "margin": v.mean, "low": v.low, "high": v.high, "p": v.p_value,
                         "n_seeds": v.n, "params_a": c.params_a, "params_b": c.params_b,
                         "param_mismatch": c.mismatch, "measured": c.measured, "check_verdict": v.verdict,
                         "reason": v.reason, "verdict": r.verdict})
    return pl.DataFrame(rows, schema=COLUMNS)


# ---- the analysis plugin -------------------------------------------------------------------------
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _CheckModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    a: Annotated[str, Field(min_length=1, max_length=200)]
    b: Annotated[str, Field(min_length=1, max_length=200)]
    metric: Annotated[str, Field(min_length=1, max_length=200)] = "quality"
    relation: Literal[RELATIONS] = "better"  # type: ignore[valid-type]
    tolerance: Annotated[Finite, Field(ge=0)] = 0.0
    factor: Annotated[Finite, Field(gt=0)] = 1.0
    max_mismatch: Annotated[Finite, Field(ge=0)] | None = None


class _ClaimModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[str, Field(min_length=1, max_length=200)]
    text: Annotated[str, Field(max_length=2000)]
    task: str
    kind: Literal[KINDS] | None = None  # type: ignore[valid-type]
    checks: Annotated[list[_CheckModel], Field(min_length=1)]


def validate_claims(raw: Any, suite: SuiteView) -> list[dict[str, Any]]:
    """The suite's `[[claims]]` checked against the schema and the suite's tasks and entries."""
    if not isinstance(raw, list):
        raise ConfigError("expected an array of tables ([[claims]])")
    out = []
    for i, item in enumerate(raw):
        try:
            claim = _ClaimModel.model_validate(item)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            loc = list(err["loc"])
            key = f"[{i}]" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            if err["type"] == "missing":
                msg = "required field is missing"
            raise ConfigError(f"{msg} (got {str(err.get('input'))[:100]})" if err["type"] not in (
                "missing", "extra_forbidden") else msg, key) from None
        if claim.task not in suite.tasks:
            raise ConfigError(f"task {claim.task!r} is not in the suite's tasks {list(suite.tasks)}", f"[{i}].task")
        for j, c in enumerate(claim.checks):
            for side in ("a", "b"):
                task, method, _ = parse_ref(getattr(c, side))
                if task is not None and task not in suite.tasks:
                    raise ConfigError(f"{getattr(c, side)!r} names task {task!r}, not one of the suite's tasks "
                                      f"{list(suite.tasks)}", f"[{i}].checks[{j}].{side}")
                if method not in suite.entries:
                    raise ConfigError(f"{getattr(c, side)!r} names no method entry of the suite; "
                                      f"entries: {sorted(suite.entries)}", f"[{i}].checks[{j}].{side}")
        out.append(claim.model_dump())
    return out


class ClaimsAnalysis(Analysis):
    name = "claims"
    table = "claims"
    description = "Paper claims: held, did not hold or inconclusive, from paired 95% intervals over seeds."

    def validate(self, raw: Any, suite: SuiteView) -> list[dict[str, Any]]:
        return validate_claims(raw, suite)

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        results = evaluate(ctx.summary, [from_dict(c) for c in ctx.options], ctx.records)
        return AnalysisResult(table=to_frame(results), markdown="## Claims\n\n" + render_markdown(results))

    def render(self, table: pl.DataFrame) -> str:
        lines = ["claims:"]
        for r in table.to_dicts():
            if r["check"] == 1:
                lines.append(f"  {r['verdict']:13} {r['claim']}: {r['paper']}")
            v = stats.Verdict(r["check_verdict"], r["n_seeds"] or 0, _nan(r["margin"]), _nan(r["low"]),
                              _nan(r["high"]), _nan(r["p"]), r["reason"] or "")
            why = f", {v.reason}" if v.reason and v.verdict != stats.HELD else ""
            lines.append(f"    - {r['measured']}\n      margin {_interval(v)}, p {_p(v)}, {v.n} seeds: "
                         f"{v.verdict}{why}")
        return "\n".join(lines)


def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)


@hookimpl
def register_analyses(register) -> None:
    register(ClaimsAnalysis)
