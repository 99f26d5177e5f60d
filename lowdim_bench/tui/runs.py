"""Past runs for the app: the reports list, loading a run's records, comparing two, exporting.

No Textual; called from the app's thread workers.

Cell counts are of real cells only: a run's store also holds pseudo-cells whose keys carry a
prefix (`interleave:<task>` for the interleaved latency, `analysis:<name>` for analyses); real
cell keys are plain hashes, so any key with a ':' is left out.
Regressions in compare are the gate's (lowdim_bench.gate.evaluate, docs/gate.md), not a rule
of the app's own, so the app and `lowdim-bench compare` never disagree.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fmt

MAX_DEPTH = 3  # reports/<run>/, reports/baseline/<run>/, reports/<group>/<sub>/<run>/
SKIP_DIRS = {"exports", ".git", "__pycache__"}


def is_real_cell(key: str) -> bool:
    return ":" not in key


# ---- reports ------------------------------------------------------------------------------------
@dataclass
class RunInfo:
    run_id: str
    suite: str
    created: str
    device: str
    done: int
    total: int
    failed: int
    status: str
    path: Path
    where: str = ""  # the folder under the reports folder, when nested (e.g. "baseline")


def _finished_from_parquet(parquet: Path) -> dict[str, str]:
    """cell key -> status from a finished run's records (a committed baseline has no cells.jsonl)."""
    import polars as pl

    df = pl.read_parquet(parquet, columns=["cell_key", "status"])
    out: dict[str, str] = {}
    for key, status in df.unique().iter_rows():
        if key and (out.get(key) != "failed"):
            out[key] = status
    return out


def run_info(run_dir: Path, reports_dir: Path | None = None) -> RunInfo:
    meta = json.loads((run_dir / "run.json").read_text())
    finished: dict[str, str] = {}
    cells_file = run_dir / "cells.jsonl"
    if cells_file.exists():
        for line in cells_file.read_text().splitlines():
            try:
                c = json.loads(line)
                finished[c["key"]] = c["status"]
            except (json.JSONDecodeError, KeyError):
                continue
    elif (run_dir / "records.parquet").exists():
        finished = _finished_from_parquet(run_dir / "records.parquet")
    finished = {k: v for k, v in finished.items() if is_real_cell(str(k))}
    env = meta.get("environment") or {}
    where = ""
    if reports_dir is not None:
        parent = os.path.relpath(run_dir.parent, reports_dir)
        where = "" if parent == "." else parent
    return RunInfo(meta.get("run_id", run_dir.name), (meta.get("suite") or {}).get("name", "?"),
                   str(meta.get("created_at", ""))[:16].replace("T", " "), str(env.get("device_name", "?")),
                   len(finished), len(meta.get("cells") or []), sum(s == "failed" for s in finished.values()),
                   str(meta.get("status", "?")), run_dir, where)


def run_dirs(reports_dir: Path) -> list[Path]:
    """Folders holding a run.json under reports_dir, up to MAX_DEPTH deep (the baseline included)."""
    out = []
    root = Path(reports_dir)
    for here, dirs, files in os.walk(root):
        depth = len(Path(here).relative_to(root).parts)
        if "run.json" in files and depth > 0:
            out.append(Path(here))
            dirs[:] = []  # a run folder holds no runs
            continue
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and depth < MAX_DEPTH]
    return out


def signature(reports_dir: Path) -> tuple:
    """What changes when a run starts, progresses or finishes: cheap to poll (stat calls only)."""
    sig = []
    for d in run_dirs(reports_dir):
        for name in ("run.json", "cells.jsonl"):
            try:
                st = (d / name).stat()
                sig.append((str(d), name, st.st_mtime_ns, st.st_size))
            except OSError:
                continue
    return tuple(sorted(sig))


def list_runs(reports_dir: Path) -> list[RunInfo]:
    """Run folders under reports_dir, newest first; folders without run.json are not runs."""
    out = []
    for d in run_dirs(reports_dir):
        try:
            out.append(run_info(d, reports_dir))
        except (OSError, ValueError, json.JSONDecodeError):
            continue
    return sorted(out, key=lambda r: (r.created, r.run_id), reverse=True)


def load_records(run_dir: Path) -> list[dict[str, Any]]:
    from .. import report

    return report.load(run_dir).to_dicts()


# ---- estimate -----------------------------------------------------------------------------------
def past_durations(reports_dir: Path, suite_name: str) -> tuple[dict[tuple[str, str, str], float], str]:
    """Median cell wall time per (task, method, kind) in the newest run of this suite that has
    finished cells, and that run's id ({} and "" when there is none)."""
    import statistics

    for info in list_runs(reports_dir):
        if info.suite != suite_name or info.done == 0:
            continue
        try:
            per_cell = {}
            for r in load_records(info.path):
                key = r.get("cell_key") or ""
                if is_real_cell(key) and r.get("status") == "ok" and fmt.is_num(r.get("duration_s")):
                    per_cell[key] = ((r.get("task"), r.get("method"), r.get("kind")), r["duration_s"])
        except (OSError, ValueError):
            continue
        groups: dict[tuple[str, str, str], list[float]] = {}
        for group, d in per_cell.values():
            groups.setdefault(group, []).append(d)
        if groups:
            return {g: statistics.median(v) for g, v in groups.items()}, info.run_id
    return {}, ""


def estimate(cells: list[Any], durations: dict[tuple[str, str, str], float], source: str, jobs: int) -> str:
    """'12 cells, about 3m20s at 2 jobs (cell times of run X)'; cells never timed take the median."""
    import statistics

    n = len(cells)
    head = f"{n} cell{'s' if n != 1 else ''}"
    if not durations:
        return f"{head}; time unknown (no finished run of this suite in the reports folder)"
    typical = statistics.median(durations.values())
    known = sum((c.task, c.shown_name, c.kind) in durations for c in cells)
    total = sum(durations.get((c.task, c.shown_name, c.kind), typical) for c in cells)
    guess = "" if known == n else f", {n - known} never timed: counted at the median"
    return f"{head}, about {fmt.duration(total / max(jobs, 1))} at {jobs} job{'s' if jobs != 1 else ''} " \
           f"(cell times of {source}{guess})"


# ---- compare ------------------------------------------------------------------------------------
HEADLINE = ("quality", "params_trainable", "params_stored", "flops_forward", "latency_p50", "latency_ratio",
            "memory_peak")
NOT_FIGURES = {"quality_std", "quality_ci95", "quality_n", "n_seeds"}


@dataclass
class CompareRow:
    text: list[str]  # task, kind, method, size, metric, A, B, delta, rel, gate
    regression: bool  # the gate fails this row and metric
    improvement: bool
    warn: bool = False  # beyond the tolerance, not significant
    headline: bool = True  # quality, parameters, FLOPs, latency, memory
    reason: str = ""

    @property
    def words(self) -> str:
        return " ".join(self.text[:5]).lower()


def headline_rank(metric: str) -> int:
    base = metric.split("[", 1)[0].split("@", 1)[0]
    return next((i for i, h in enumerate(HEADLINE) if base == h), len(HEADLINE))


def compare_rows(a: Path, b: Path) -> list[CompareRow]:
    """Every metric of report.compare, headline metrics first (quality, parameters, FLOPs, latency,
    memory), each judged by the gate's default rule (gate.evaluate)."""
    from .. import gate, report

    da, db = report.load(a), report.load(b)
    c = report.compare(da, db)
    if c.is_empty():
        return []
    result = gate.evaluate(da, db)
    checks = {(chk.row, chk.column): chk for chk in result.checks}
    metrics = {gate.metric_of(m) for m in c["metric"].unique().to_list()}
    quality_hib = {t: h for t, h in da.filter(da["metric"] == "quality").select("task", "higher_is_better")
                   .unique("task").iter_rows()}
    out = []
    for r in c.to_dicts():
        metric = r["metric"]
        if metric in NOT_FIGURES:
            continue
        row = (r["task"], r["kind"], r["method"], r["size"])
        chk = checks.get((row, metric))
        status = chk.status if chk else ""
        a_text, unit = fmt.metric_value(metric, r["a"])
        b_text, _ = fmt.metric_value(metric, r["b"])
        d_text, _ = fmt.metric_value(metric, r["delta"])
        rel = "-" if r["rel"] is None else f"{r['rel']:+.1%}"
        better = False
        if chk is not None and status == gate.PASS and chk.change is not None:
            tol = next((t for t in reversed(result.tolerances) if gate.selects(t, metric, metrics)), None)
            hib = quality_hib.get(r["task"]) if metric.startswith("quality") else _hib(metric)
            if tol is not None and hib is not None:
                better = (chk.change if hib else -chk.change) > tol.limit
        gate_text = {"fail": "▼ regression", "warn": "? not significant", "pass": "▲ better" if better else "ok",
                     "skip": ""}.get(status, "")
        text = [r["task"], r["kind"], r["method"], r["size"], f"{metric}{f' ({unit})' if unit else ''}", a_text,
                b_text, d_text, rel, gate_text]
        out.append(CompareRow(text, status == gate.FAIL, better, status == gate.WARN,
                              headline_rank(metric) < len(HEADLINE), chk.reason if chk else ""))
    for chk in result.checks:  # rows missing from B or failed there: the gate fails them too
        if chk.column == "cells" and chk.status == gate.FAIL:
            out.append(CompareRow([*chk.row, "cells", "ok", "-", "-", "-", "▼ regression"], True, False, False, True,
                                  chk.reason))
    out.sort(key=lambda x: (not x.regression, headline_rank(x.text[4].split(" ")[0]), x.text[:4], x.text[4]))
    return out


def _hib(metric: str) -> bool | None:
    """Costs are better lower; other figures have no direction here (quality's comes from the records)."""
    return False if metric.startswith(("latency", "memory", "flops", "params")) else None


def filter_compare(rows: list[CompareRow], text: str, headline_only: bool, regressions_only: bool) -> list[CompareRow]:
    words = text.lower().split()
    return [r for r in rows if all(w in r.words for w in words) and (r.headline or not headline_only or r.regression)
            and (r.regression or not regressions_only)]


def export_view(records: list[dict[str, Any]], out_dir: Path, header: str) -> Path:
    """Write the Polars report files (records.parquet, summary.csv, summary.md) of the rows shown."""
    from .. import report

    out_dir.mkdir(parents=True, exist_ok=True)
    report.write(out_dir, records, header)
    return out_dir
