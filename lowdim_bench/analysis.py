"""The analysis side of the contract: what an Analysis is handed after a run, and what it returns.

Re-exported by lowdim_bench.api (import them from there). Kept apart because analyses see a whole
run (records, summary, saved artefacts), not one model, and so share nothing with the cell types.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import polars as pl
from torch import nn


class ConfigError(Exception):
    """Raised by `Analysis.validate` for a bad suite table; the suite loader adds file and line.
    `key` names the field (dotted for nested ones, e.g. "checks.relation") when there is one."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class SuiteView:
    """What an analysis may check its suite table against: task names, method entries (the name
    a suite row shows -> the registered method) and the reference entry."""

    tasks: tuple[str, ...]
    entries: Mapping[str, str]
    reference: str | None
    path: str = ""


@dataclass
class ArtefactInfo:
    """One saved artefact of one cell (`save = ["model"]`)."""

    cell_key: str
    task: str
    method: str  # the entry's shown name
    kind: str
    size: str  # as the summary shows it: 0.1, knob 4, full
    seed: int
    what: str  # "model"
    path: Path
    bytes: int


class Artefacts(Protocol):
    """Saved artefacts of a run. `load_model` rebuilds the cell's model structure (base + method
    at the knob it reached) and loads the saved weights into it."""

    def list(self, what: str = "model") -> list[ArtefactInfo]: ...

    def load_model(self, cell_key: str) -> nn.Module: ...

    def task(self, cell_key: str) -> Any:
        """The cell's task, built with the cell's options."""
        ...

    def splits(self, cell_key: str) -> dict[str, Any]:
        """The cell's target splits (its seed's)."""
        ...


@dataclass
class AnalysisRecord:
    """One value an analysis measured; fields left None are not about one cell (e.g. a CKA
    between two methods names both in `phase` or `metric`)."""

    metric: str
    value: float
    unit: str
    task: str | None = None
    method: str | None = None
    kind: str | None = None
    seed: int | None = None
    phase: str | None = None
    higher_is_better: bool | None = None


@dataclass
class AnalysisResult:
    """An analysis's output: a table (written as <name>.csv in the run folder), a Markdown section
    (appended to summary.md) and records (stored with the run's records)."""

    table: pl.DataFrame | None = None
    markdown: str = ""
    records: list[AnalysisRecord] = field(default_factory=list)


@dataclass
class AnalysisContext:
    run_dir: Path
    records: pl.DataFrame
    summary: pl.DataFrame
    options: Any
    suite: SuiteView
    artefacts: Artefacts


class Analysis:
    """Runs after a run's cells, on its records and saved artefacts.

    table: the suite's top-level table it reads (`[[claims]]` -> "claims"); a suite that has the
    table runs the analysis, and so does one that names it in `analyses = [...]`. validate:
    check that table before any cell runs (raise ConfigError). needs: artefacts the cells must
    save for it, from {"model"}.
    """

    name: ClassVar[str]
    table: ClassVar[str | None] = None
    needs: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def validate(self, raw: Any, suite: SuiteView) -> Any:
        """The suite table checked and normalised (JSON-able: it is stored in run.json)."""
        return raw

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        """The analysis over the run: its table, Markdown section and records."""
        raise NotImplementedError

    def render(self, table: pl.DataFrame) -> str:
        """The table as `lowdim-bench run` and `show` print it."""
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True, fmt_str_lengths=80):
            return str(table)
