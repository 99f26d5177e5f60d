"""The record schema (Polars, long format), summaries, the Pareto front and run comparison.

One record = one measured value of one cell. Everything the CLI, the app and the CI gate show
is derived from records with the functions here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from .core.records import SCHEMA, to_frame
from .core.store import RunStore, write_atomic
from .stats import t_quantile

GROUP = ["task", "kind", "method", "size"]
BEFORE = "(before adaptation)"  # the row of the base's own target score (adapt cells' `quality_before`)
INTERLEAVED = "inference_interleaved"  # lowdim_bench.run.interleave.PHASE (the gate pins the same name)
NOISY_SPREAD = 1.5  # p90 / p50 above this: the latency varied too much between calls to trust its median


def load(run_dir: str | Path) -> pl.DataFrame:
    """Records of a run: the parquet file when the run finished, else what the store has so far."""
    run_dir = Path(run_dir)
    parquet = run_dir / "records.parquet"
    if parquet.exists():
        try:
            frame = pl.read_parquet(parquet)
        except Exception:  # a torn file (killed mid-write by an older version, a full disk): the jsonl is the truth
            frame = None
        if frame is not None:
            missing = [c for c in SCHEMA if c not in frame.columns]  # a run written before a field existed
            return frame.with_columns(pl.lit(None, dtype=SCHEMA[c]).alias(c) for c in missing) if missing else frame
    return to_frame(RunStore.open(run_dir).records())


def column_name(metric: str, phase: str | None, batch_size: int | None) -> str:
    """`latency_p50[inference]@bs64`. Only figures qualified by a phase (latency, memory) are per
    batch size; per-sample figures (FLOPs) carry their batch size in the record, not the name."""
    if not phase:
        return metric
    name = f"{metric}[{phase}]"
    return name if batch_size is None else f"{name}@bs{batch_size}"


def _with_size(df: pl.DataFrame) -> pl.DataFrame:
    def size(budget: float | None, knob: float | None) -> str:
        if budget is not None and not math.isnan(budget):
            return f"{budget:g}"
        if knob is not None and not math.isnan(knob):
            return f"knob {knob:g}"
        return "full"

    return df.with_columns(pl.struct(["budget", "knob"]).map_elements(
        lambda s: size(s["budget"], s["knob"]), return_dtype=pl.Utf8).alias("size"))


def _size_key(size: str) -> tuple[int, float]:
    """Budgets first, then knob values, numerically (so knob 200 comes before knob 1000), then full."""
    if size == "full":
        return (2, 0.0)
    if size.startswith("knob "):
        return (1, float(size[5:]))
    return (0, float(size))


def _sorted(s: pl.DataFrame) -> pl.DataFrame:
    order = sorted(range(len(s)), key=lambda i: (s["task"][i] or "", s["kind"][i] or "", s["method"][i] or "",
                                                 _size_key(s["size"][i])))
    return s[order]


def _cell_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Records of cells: those of a pass over the run that name no cell (a failed interleave
    group) or of an analysis (its cross-cell values) live in their own files, not in the table;
    series (a solver's error per round, `step` set) are curves, not figures."""
    return df.filter(pl.col("task").is_not_null() & pl.col("kind").is_not_null() & pl.col("method").is_not_null()
                     & pl.col("step").is_null() & ~pl.col("cell_key").fill_null("").str.starts_with("analysis:"))


def summary(df: pl.DataFrame) -> pl.DataFrame:
    """One row per task/kind/method/size: mean over seeds of every metric, quality spread,
    seed counts, failures, and whether the row is on the quality-vs-parameters Pareto front."""
    df = _cell_rows(df)
    if df.is_empty():
        return pl.DataFrame()
    df = _with_size(before_rows(df))
    ok = _with_column(df.filter(pl.col("status") == "ok"))
    counts = df.group_by(GROUP).agg(
        pl.col("seed").filter(pl.col("status") == "ok").n_unique().alias("n_seeds"),
        pl.col("cell_key").filter(pl.col("status") == "failed").n_unique().alias("n_failed"),
        pl.col("error").filter(pl.col("status") == "failed").first().alias("first_error"),
        pl.col("over_budget").fill_null(False).any().alias("over_budget"),
    )
    if ok.is_empty():
        return _sorted(counts)
    per_seed = _per_seed(ok)
    wide = per_seed.group_by(GROUP + ["column"]).agg(pl.col("value").mean().alias("mean")).pivot(
        on="column", index=GROUP, values="mean")
    spread = per_seed.filter((pl.col("column") == "quality") & pl.col("value").is_not_nan()).group_by(GROUP).agg(
        pl.col("value").std().alias("quality_std"), pl.len().cast(pl.Int64).alias("quality_n"))
    spread = spread.with_columns(pl.struct(["quality_n", "quality_std"]).map_elements(
        lambda s: _ci95(s["quality_n"], s["quality_std"]), return_dtype=pl.Float64).alias("quality_ci95"))
    units = ok.group_by("column").agg(pl.col("unit").first())
    dirs = ok.filter(pl.col("metric") == "quality").select("task", "higher_is_better").unique("task")
    out = counts.join(wide, on=GROUP, how="left").join(spread, on=GROUP, how="left")
    out = _sorted(out.join(dirs, on="task", how="left"))
    out = mark_pareto(out)
    return out.with_columns(pl.lit(json.dumps(dict(units.iter_rows()))).alias("units"))


def before_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Adapt cells' `quality_before` (the base scored on the target before adapting) as one row
    per task, BEFORE, with its own seeds, so the table says what adapting started from."""
    sel = (pl.col("metric") == "quality_before") & (pl.col("status") == "ok")
    before = df.filter(sel)
    if before.is_empty():
        return df
    first = before.group_by(["task", "kind", "seed"], maintain_order=True).agg(pl.all().first())
    first = first.select(df.columns).with_columns(
        pl.lit(BEFORE).alias("method"), pl.lit("quality").alias("metric"),
        (pl.lit("before:") + pl.col("task") + pl.lit(":") + pl.col("seed").cast(pl.Utf8)).alias("cell_key"),
        *(pl.lit(None, dtype=df.schema[c]).alias(c) for c in ("budget", "knob", "budget_reached", "over_budget")
          if c in df.columns))
    return pl.concat([df.filter(~sel), first], how="vertical_relaxed")


def _with_column(ok: pl.DataFrame) -> pl.DataFrame:
    return ok.with_columns(pl.struct(["metric", "phase", "batch_size"]).map_elements(
        lambda s: column_name(s["metric"], s["phase"], s["batch_size"]), return_dtype=pl.Utf8).alias("column"))


def _per_seed(ok: pl.DataFrame) -> pl.DataFrame:
    return ok.group_by(GROUP + ["seed", "column"]).agg(pl.col("value").mean())


def per_seed(df: pl.DataFrame) -> pl.DataFrame:
    """Every summary figure per seed (long: task, kind, method, size, seed, column, value): what
    the summary averages, for paired comparisons over the seeds two rows share (claims)."""
    df = _cell_rows(df).filter(pl.col("status") == "ok")
    if df.is_empty():
        return pl.DataFrame(schema={**{g: pl.Utf8 for g in GROUP}, "seed": pl.Int64, "column": pl.Utf8,
                                    "value": pl.Float64})
    return _per_seed(_with_column(_with_size(df)))


def _ci95(n: int | None, std: float | None) -> float | None:
    """Half-width of the two-sided 95% t interval of a mean of n values (None below 2 values)."""
    if not n or n < 2 or std is None or math.isnan(std):
        return None
    return t_quantile(0.975, n - 1) * std / math.sqrt(n)


def mark_pareto(s: pl.DataFrame) -> pl.DataFrame:
    """Pareto front of quality vs parameters within each task and kind (trainable params for
    adapt, stored otherwise): a row is on it when no other row is at most as large and better.

    `pareto_tie`: a row off the front only by quality differences inside the 95% intervals
    (`quality_ci95`; a row without one is its mean alone): its quality could exceed that of
    every row that dominates it, so with more seeds it might be on the front."""
    if "quality" not in s.columns:
        return s.with_columns(pl.lit(False).alias("pareto"), pl.lit(False).alias("pareto_tie"))
    flags, ties = [], []
    rows = s.to_dicts()
    for r in rows:
        pcol = "params_trainable" if r["kind"] == "adapt" else "params_stored"
        p, q, hib = r.get(pcol), r.get("quality"), r.get("higher_is_better")
        if p is None or q is None:
            flags.append(False)
            ties.append(False)
            continue
        sign = 1 if hib in (None, True) else -1
        dominators = []
        for o in rows:
            if o is r or o["task"] != r["task"] or o["kind"] != r["kind"]:
                continue
            op, oq = o.get(pcol), o.get("quality")
            if op is None or oq is None:
                continue
            if op <= p and sign * oq >= sign * q and (op < p or sign * oq > sign * q):
                dominators.append(o)
        flags.append(not dominators)
        ties.append(bool(dominators) and all(_could_beat(r, o, sign) for o in dominators))
    return s.with_columns(pl.Series("pareto", flags, dtype=pl.Boolean),
                          pl.Series("pareto_tie", ties, dtype=pl.Boolean))


def _could_beat(r: dict, o: dict, sign: int) -> bool:
    """Whether r's quality could exceed o's: r's interval reaches past o's (95% half-widths)."""
    half = lambda x: x.get("quality_ci95") if x.get("quality_ci95") is not None else 0.0
    return sign * r["quality"] + half(r) > sign * o["quality"] - half(o)


# ---- display ------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "*" if v else ""
    if isinstance(v, float):
        a = abs(v)
        if a == 0:
            return "0"
        if v.is_integer() and a < 1e7:
            return str(int(v))
        if a >= 1e6 or a < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def display_columns(s: pl.DataFrame) -> list[tuple[str, str]]:
    """(column, header) pairs the comparison table shows, in order, those present in the summary."""
    cols = [("task", "task"), ("kind", "kind"), ("method", "method"), ("size", "budget"),
            ("budget_reached", "reached"), ("quality", "quality"), ("quality_std", "±"),
            ("quality_ci95", "±95%"), ("n_seeds", "seeds"), ("params_trainable", "trainable"), ("params_stored", "stored"),
            ("stored_bytes", "bytes"), ("flops_forward", "FLOPs/sample")]
    cols += latency_columns(s)
    cols += [(c, "train peak MiB") for c in s.columns if c.startswith("memory_peak[train_step]")]
    cols += [("wall_seconds", "solve s"), ("seconds_per_round", "s/round"), ("memory_peak[solve]", "solve peak MiB")]
    cols += [("pareto", "pareto"), ("pareto_tie", "tie"), ("n_failed", "failed")]
    return [(c, h) for c, h in cols if c in s.columns]


def latency_columns(s: pl.DataFrame) -> list[tuple[str, str]]:
    """The interleaved inference p50 per batch size (shown with its ratio to the reference), or,
    in a run without an interleaved pass, the per-cell p50 (header says so: not comparable
    across rows on a loaded machine, where one cell's figure was 89x another's)."""
    for phase, header in ((INTERLEAVED, "ms (x ref)"), ("inference", "ms/cell")):
        cols = [c for c in s.columns if c.startswith(f"latency_p50[{phase}]@bs")]
        if cols:
            cols.sort(key=lambda c: int(c.rsplit("@bs", 1)[1]))
            return [(c, f"bs{c.rsplit('@bs', 1)[1]} {header}") for c in cols]
    return []


def latency_text(r: dict[str, Any], col: str) -> str:
    """`1.23 (0.52x)?`: p50 in ms, its ratio to the reference where the interleaved pass has one,
    `?` when the spread (p90/p50) over the timed calls exceeds NOISY_SPREAD."""
    v = r.get(col)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    text = _fmt(v * 1e3)
    ratio = r.get(col.replace("latency_p50[", "latency_ratio["))
    if ratio is not None and not (isinstance(ratio, float) and math.isnan(ratio)):
        text += f" ({ratio:.2f}x)"
    spread = r.get(col.replace("latency_p50[", "latency_spread["))
    if spread is not None and not math.isnan(spread) and spread > NOISY_SPREAD:
        text += "?"
    return text


def _display_value(col: str, v: Any) -> Any:
    if v is None:
        return v
    if col.startswith("latency"):
        return v * 1e3
    if col.startswith("memory"):
        return v / 2**20
    return v


OVER = " over"  # after `reached`: even the smallest knob exceeds the budget (shown, never silent)


def table_rows(s: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    cols = display_columns(s)
    rows = [[latency_text(r, c) if c.startswith("latency_p50[") else
             _fmt(_display_value(c, r.get(c))) + (OVER if c == "budget_reached" and r.get("over_budget") else "")
             for c, _ in cols] for r in s.to_dicts()]
    return [h for _, h in cols], rows


def metric_rows(s: pl.DataFrame, prefixes: list[str]) -> tuple[list[str], list[list[str]]]:
    """Long form: one line per summary row and metric column starting with one of `prefixes`."""
    cols = sorted(c for c in s.columns if any(c.startswith(p) for p in prefixes))
    units = json.loads(s["units"][0]) if "units" in s.columns and len(s) else {}
    rows = [[*(str(r[g]) for g in GROUP), c, _fmt(r.get(c)), units.get(c, "")]
            for r in s.to_dicts() for c in cols if r.get(c) is not None]
    return GROUP + ["metric", "value", "unit"], rows


def render_table(s: pl.DataFrame, prefixes: list[str] | None = None) -> str:
    if s.is_empty():
        return "(no records)"
    headers, rows = metric_rows(s, prefixes) if prefixes else table_rows(s)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def render_markdown(s: pl.DataFrame) -> str:
    if s.is_empty():
        return "(no records)\n"
    headers, rows = table_rows(s)
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


SOLVE_NOTE = ("\nSolve rows (a problem and its solvers; docs/plugins.md, \"Solve kind\"): `budget` is the problem's size "
              "(`knob N`: rank, samples, features) or a fraction of its largest size, `reached` the size as a fraction "
              "of the largest; quality is the problem's headline on the test instance; `solve s` is the wall time of "
              "the scored solve, `s/round` the median seconds per round, `solve peak MiB` what the solve allocated at "
              "its peak (tensors plus numpy and Python).\n")


def write(run_dir: str | Path, records: list[dict[str, Any]], header: str = "", extra: str = "") -> pl.DataFrame:
    """Write records.parquet, summary.csv and summary.md; return the summary."""
    run_dir = Path(run_dir)
    df = to_frame(records)
    write_atomic(run_dir / "records.parquet", df.write_parquet)
    s = summary(df)
    if not s.is_empty():
        write_atomic(run_dir / "summary.csv", s.write_csv)
    notes = ("`reached` is the fraction of the dense model's parameters the cell's model has (trainable for adapt, "
             "stored otherwise, counted over the task's budget scope); `over` marks a cell whose smallest knob is "
             "already over its budget. Quality is the task's metric on its test split (mean over seeds, ± = std, ±95% = half-width of "
             "the 95% t interval, `-` with one seed; `seeds` = how many seeds stand behind each row). Latency in ms "
             "(median): `bsN ms (x ref)` is the interleaved pass (every cell of a task timed A B A B in one process, at "
             "the recorded thread count) with the ratio to the reference entry's median, `bsN ms/cell` a per-cell "
             "figure (no interleaved pass: not comparable across rows under load); `?` marks a latency whose spread "
             f"(p90/p50) exceeds {NOISY_SPREAD:g}, i.e. noise. Memory in MiB (peak of one training step), FLOPs per sample. "
             f"`{BEFORE}` is the base model scored on the target before adapting. "
             "`pareto` marks rows on the quality-vs-parameters front of their task and kind; `tie` marks rows "
             "off it only by quality differences inside the 95% intervals.\n")
    if not s.is_empty() and "solve" in s["kind"].to_list():
        notes += SOLVE_NOTE
    text = f"{header}\n\n{render_markdown(s)}\n{notes}{extra}"
    write_atomic(run_dir / "summary.md", lambda p: p.write_text(text))
    return s


# ---- comparison ---------------------------------------------------------------------------------
def compare(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    """Per task/kind/method/size and metric column: mean in A, mean in B, delta and relative delta."""
    sa, sb = summary(a), summary(b)
    if sa.is_empty() or sb.is_empty():
        return pl.DataFrame()
    skip = set(GROUP) | {"n_failed", "first_error", "units", "pareto", "pareto_tie", "higher_is_better", "over_budget"}
    metrics = [c for c in sa.columns if c in sb.columns and c not in skip]
    la = sa.unpivot(index=GROUP, on=metrics, variable_name="metric", value_name="a")
    lb = sb.unpivot(index=GROUP, on=metrics, variable_name="metric", value_name="b")
    out = la.join(lb, on=GROUP + ["metric"], how="full", coalesce=True).with_columns(
        pl.col("a").cast(pl.Float64), pl.col("b").cast(pl.Float64))
    out = out.with_columns((pl.col("b") - pl.col("a")).alias("delta"))
    out = out.with_columns(
        pl.when(pl.col("a").abs() > 0).then(pl.col("delta") / pl.col("a").abs()).otherwise(None).alias("rel"))
    return out.sort(GROUP + ["metric"])


COMPARE_HEADERS = ["task", "kind", "method", "budget", "metric", "A", "B", "delta", "rel"]


def _compare_rows(c: pl.DataFrame) -> list[list[str]]:
    return [[r["task"], r["kind"], r["method"], r["size"], r["metric"], _fmt(r["a"]), _fmt(r["b"]),
             _fmt(r["delta"]), "-" if r["rel"] is None else f"{r['rel']:+.1%}"] for r in c.to_dicts()]


def render_markdown_compare(c: pl.DataFrame) -> str:
    if c.is_empty():
        return "(nothing to compare)\n"
    out = ["| " + " | ".join(COMPARE_HEADERS) + " |", "|" + "---|" * len(COMPARE_HEADERS)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in _compare_rows(c)]) + "\n"


def render_compare(c: pl.DataFrame) -> str:
    if c.is_empty():
        return "(nothing to compare)"
    headers, rows = COMPARE_HEADERS, _compare_rows(c)
    widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
