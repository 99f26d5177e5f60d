"""The run store: reports/<run-id>/, written as results arrive.

Layout: run.json (suite, cells, environment, status), records.jsonl and cells.jsonl
(append-only, fsynced per cell: a cell's records first, then its line in cells.jsonl), and at
the end records.parquet, summary.csv and summary.md. A `kill -9` therefore loses at most the
cells in flight; records of a cell without a cells.jsonl line are ignored on load.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from pathlib import Path
from typing import Any

from .cells import Cell


def new_run_id(suite: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{suite}-{secrets.token_hex(2)}"


def _append(path: Path, lines: list[dict[str, Any]]) -> None:
    with path.open("a") as f:
        for line in lines:
            f.write(json.dumps(line, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
    return out


class RunStore:
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    @classmethod
    def create(cls, out_dir: Path, suite_meta: dict[str, Any], cells: list[Cell],
               environment: dict[str, Any]) -> "RunStore":
        run_id = new_run_id(suite_meta["name"])
        store = cls(Path(out_dir) / run_id)
        store.dir.mkdir(parents=True, exist_ok=False)
        store.write_meta({"run_id": run_id, "suite": suite_meta, "created_at": dt.datetime.now().isoformat(),
                          "environment": environment, "status": "running",
                          "cells": [c.__dict__ for c in cells]})
        return store

    @classmethod
    def open(cls, run_dir: Path) -> "RunStore":
        store = cls(Path(run_dir))
        if not (store.dir / "run.json").exists():
            raise FileNotFoundError(f"{run_dir}: not a run folder (no run.json)")
        return store

    # ---- metadata -----------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return json.loads((self.dir / "run.json").read_text())

    def write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1, default=str))
        os.replace(tmp, self.dir / "run.json")

    def set_status(self, status: str) -> None:
        meta = self.meta()
        meta["status"] = status
        meta["updated_at"] = dt.datetime.now().isoformat()
        self.write_meta(meta)

    @property
    def run_id(self) -> str:
        return self.dir.name

    def cells(self) -> list[Cell]:
        return [Cell.from_dict(d) for d in self.meta()["cells"]]

    # ---- results ------------------------------------------------------------------------------
    def append_cell(self, key: str, attempt: str, status: str, records: list[dict[str, Any]]) -> None:
        _append(self.dir / "records.jsonl", [{**r, "attempt": attempt} for r in records])
        _append(self.dir / "cells.jsonl", [{"key": key, "attempt": attempt, "status": status}])

    def finished(self) -> dict[str, dict[str, Any]]:
        """Cell key -> its last finished attempt ({key, attempt, status})."""
        return {c["key"]: c for c in _read_jsonl(self.dir / "cells.jsonl")}

    def records(self) -> list[dict[str, Any]]:
        """Records of finished cells, last attempt only."""
        attempts = {c["attempt"] for c in self.finished().values()}
        return [r for r in _read_jsonl(self.dir / "records.jsonl") if r.get("attempt") in attempts]
