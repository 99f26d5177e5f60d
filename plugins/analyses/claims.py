"""Paper claims checked against a run: did the paper's qualitative claim hold here?

A suite lists claims (`[[claims]]`), each with one or more checks comparing two rows of the
run's summary (a method entry at a size) on one metric. A claim holds when every check holds;
it is "not measured" when a row it needs is missing or failed. The run writes claims.csv and a
section of summary.md; docs/suites.md documents the format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lowdim_bench.api import KINDS, Analysis, AnalysisContext, AnalysisResult, ConfigError, SuiteView
from lowdim_bench.hookspecs import hookimpl

RELATIONS = ("better", "not_worse", "fewer")


@dataclass
class Check:
    """`a` and `b` are "method@size" (size as the summary shows it: 0.1, knob 4, full).

    better: a's metric is better than b's (direction: the task's for quality, lower otherwise);
    not_worse: a is no worse than b by more than `tolerance` (relative, e.g. 0.02 = 2%);
    fewer: a's metric is at most b's divided by `factor` (e.g. trainable parameters, 16x fewer).
    """

    a: str
    b: str
    metric: str = "quality"
    relation: str = "better"
    tolerance: float = 0.0
    factor: float = 1.0


@dataclass
class Claim:
    name: str
    text: str
    task: str
    kind: str | None = None
    checks: list[Check] = field(default_factory=list)


@dataclass
class ClaimResult:
    name: str
    text: str
    measured: str
    held: bool | None  # None: not measured


def from_dict(d: dict[str, Any]) -> Claim:
    """A claim as stored in run.json (dataclasses.asdict form)."""
    return Claim(name=d["name"], text=d["text"], task=d["task"], kind=d.get("kind"),
                 checks=[Check(**c) for c in d.get("checks", [])])


def parse_ref(ref: str) -> tuple[str, str]:
    method, _, size = ref.partition("@")
    return method.strip(), (size.strip() or "full")


def _row(s: pl.DataFrame, claim: Claim, ref: str) -> dict[str, Any] | None:
    method, size = parse_ref(ref)
    cond = (pl.col("task") == claim.task) & (pl.col("method") == method) & (pl.col("size") == size)
    if claim.kind:
        cond &= pl.col("kind") == claim.kind
    rows = s.filter(cond).to_dicts() if not s.is_empty() else []
    return rows[0] if rows else None


def _better(metric: str, row: dict[str, Any]) -> int:
    """+1 when higher is better for this metric, -1 when lower is."""
    if metric.startswith("quality"):
        return -1 if row.get("higher_is_better") is False else 1
    return -1


def evaluate_check(s: pl.DataFrame, claim: Claim, check: Check) -> tuple[str, bool | None]:
    ra, rb = _row(s, claim, check.a), _row(s, claim, check.b)
    missing = [ref for ref, r in ((check.a, ra), (check.b, rb)) if r is None or r.get(check.metric) is None]
    if missing:
        return f"{check.metric}: no result for {', '.join(missing)}", None
    va, vb = float(ra[check.metric]), float(rb[check.metric])
    sign = _better(check.metric, ra)
    if check.relation == "better":
        held = sign * va > sign * vb
    elif check.relation == "not_worse":
        held = sign * (va - vb) >= -check.tolerance * abs(vb)
    elif check.relation == "fewer":
        held = va * check.factor <= vb
    else:
        raise ValueError(f"unknown relation {check.relation!r}; expected one of {RELATIONS}")
    detail = f" (x{check.factor:g})" if check.relation == "fewer" else (
        f" (tol {check.tolerance:.0%})" if check.relation == "not_worse" else "")
    return f"{check.metric}: {check.a} {va:.4g} vs {check.b} {vb:.4g}, {check.relation}{detail}", held


def evaluate(s: pl.DataFrame, claims: list[Claim]) -> list[ClaimResult]:
    results = []
    for claim in claims:
        parts = [evaluate_check(s, claim, c) for c in claim.checks]
        verdicts = [h for _, h in parts]
        held = None if any(v is None for v in verdicts) else all(verdicts)
        results.append(ClaimResult(claim.name, claim.text, "; ".join(m for m, _ in parts), held))
    return results


def verdict(held: bool | None) -> str:
    return {True: "held", False: "did not hold", None: "not measured"}[held]


def render_markdown(results: list[ClaimResult]) -> str:
    lines = ["| claim | paper says | measured here | verdict |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.text} | {r.measured} | {verdict(r.held)} |" for r in results]
    return "\n".join(lines) + "\n"


def to_frame(results: list[ClaimResult]) -> pl.DataFrame:
    return pl.DataFrame([{"claim": r.name, "paper": r.text, "measured": r.measured, "verdict": verdict(r.held)}
                         for r in results], schema={"claim": pl.Utf8, "paper": pl.Utf8, "measured": pl.Utf8,
                                                    "verdict": pl.Utf8})


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
                method = parse_ref(getattr(c, side))[0]
                if method not in suite.entries:
                    raise ConfigError(f"{getattr(c, side)!r} names no method entry of the suite; "
                                      f"entries: {sorted(suite.entries)}", f"[{i}].checks[{j}].{side}")
        out.append(claim.model_dump())
    return out


class ClaimsAnalysis(Analysis):
    name = "claims"
    table = "claims"
    description = "Paper claims: did each paper's qualitative claim hold in this run?"

    def validate(self, raw: Any, suite: SuiteView) -> list[dict[str, Any]]:
        return validate_claims(raw, suite)

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        results = evaluate(ctx.summary, [from_dict(c) for c in ctx.options])
        return AnalysisResult(table=to_frame(results), markdown="## Claims\n\n" + render_markdown(results))

    def render(self, table: pl.DataFrame) -> str:
        lines = ["claims:"]
        for r in table.to_dicts():
            lines.append(f"  {r['verdict']:13} {r['claim']}: {r['paper']}\n                {r['measured']}")
        return "\n".join(lines)


@hookimpl
def register_analyses(register) -> None:
    register(ClaimsAnalysis)
