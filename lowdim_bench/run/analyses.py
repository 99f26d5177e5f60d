"""Analyses after a run's cells: each named in the suite meta runs on the records and artefacts.

The runner knows only this: an analysis is looked up by name, handed an AnalysisContext, and
its result is written - the table as <name>.csv, its records into the store (a pseudo-cell
`analysis:<name>`, replaced when the analysis runs again on resume), its Markdown returned for
summary.md. A failing analysis is a failed record and a line in summary.md; the run goes on.
"""
from __future__ import annotations

import secrets
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import api, report
from ..core import records
from ..core.store import RunStore, write_atomic
from ..registry import Registry, UnknownName
from .artefacts import RunArtefacts

KEY_PREFIX = "analysis:"


@dataclass
class Outcome:
    name: str
    ok: bool
    markdown: str
    error: str = ""


def view(meta: dict[str, Any], path: str = "") -> api.SuiteView:
    return api.SuiteView(tuple(meta.get("tasks") or ()), dict(meta.get("entries") or {}), meta.get("reference"),
                         path or str(meta.get("path", "")))


def run_all(store: RunStore, meta: dict[str, Any], registry: Registry, device: str = "cpu") -> list[Outcome]:
    """Run every analysis the suite asked for; store their records and tables."""
    wanted: dict[str, Any] = meta.get("analyses") or {}
    if not wanted:
        return []
    frame = records.to_frame(store.records())
    summary = report.summary(frame)
    artefacts = RunArtefacts(store.dir, registry, device)
    outcomes = []
    for name, options in wanted.items():
        outcomes.append(_one(store, name, options, registry, api.AnalysisContext(
            run_dir=store.dir, records=frame, summary=summary, options=options, suite=view(meta),
            artefacts=artefacts)))
    return outcomes


def _one(store: RunStore, name: str, options: Any, registry: Registry, ctx: api.AnalysisContext) -> Outcome:
    key = f"{KEY_PREFIX}{name}"
    base = records.pseudo(store.run_id, key, method=f"({name})")
    try:
        analysis = registry.analysis(name).cls()
        result = analysis.run(ctx) or api.AnalysisResult()
        if result.table is not None:
            _write_csv(result.table, store.dir / f"{name}.csv")
        recs = [records.from_analysis(base, r) for r in result.records]
        store.append_cell(key, secrets.token_hex(6), "ok", recs)
        return Outcome(name, True, result.markdown)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a plugin may raise anything
        reason = f"analysis {name!r} failed: {type(exc).__name__}: {exc}"
        if isinstance(exc, UnknownName):
            reason = f"analysis {name!r} is not installed any more ({exc})"
        store.append_cell(key, secrets.token_hex(6), "failed", [records.failed(base, reason, traceback.format_exc())])
        return Outcome(name, False, f"**{reason}**\n", reason)


def _write_csv(table: Any, path: Path) -> None:
    write_atomic(path, table.write_csv)


def sections(outcomes: list[Outcome]) -> str:
    """The Markdown every analysis added, for summary.md; a section without a heading gets the
    analysis's name as one."""
    out = []
    for o in outcomes:
        text = o.markdown.strip()
        if text:
            out.append(f"\n{text}\n" if text.startswith("#") else f"\n## {o.name}\n\n{text}\n")
    return "".join(out)
