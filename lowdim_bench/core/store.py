"""The run store: reports/<run-id>/, written as results arrive, readable whatever happened to it.

Layout: run.json (suite, cells, environment, status), records.jsonl and cells.jsonl
(append-only, fsynced per cell: a cell's records first, then its line in cells.jsonl), and at
the end records.parquet, summary.csv and summary.md. A `kill -9` therefore loses at most the
cells in flight; records of a cell without a cells.jsonl line are ignored on load.

Faults it survives (docs/reports.md, "When things go wrong"):
- a torn last line (a kill or a full disk mid-write) is cut off before the next append, so the
  next cell's records are never glued to it;
- a line that is not a JSON object anywhere in a jsonl file is skipped and reported
  (`problems`), never silently taken for a record;
- run.json and every file written whole go through a temporary file and a rename;
- one writer at a time: `lock()` takes an exclusive lock on the folder, a second writer is refused;
- every OS error becomes StorageError, one line naming the path (exit code 3 in the CLI).
"""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .cells import Cell


class StorageError(Exception):
    """A run folder that cannot be written or read. The message names the path, for the user as is."""


class RunLocked(StorageError):
    """Another process is writing this run folder."""


def describe(exc: OSError, path: Path | str) -> str:
    reason = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.ENOTDIR: "a path component is a file, not a folder",
              errno.EEXIST: "it exists already"}.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{path}: {reason}"


@contextmanager
def storage(path: Path | str) -> Iterator[None]:
    """Turn OS errors inside into StorageError naming `path`."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(describe(e, getattr(e, "filename", None) or path)) from None


def new_run_id(suite: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{suite}-{secrets.token_hex(2)}"


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write a whole file through a temporary sibling and a rename: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with storage(path):
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def repair_tail(path: Path) -> bool:
    """Cut a torn last line (no final newline) off a jsonl file; True when something was cut."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        data = f.seek(0) or f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())
        return True


def _append(path: Path, lines: list[dict[str, Any]]) -> None:
    with storage(path):
        repair_tail(path)
        with path.open("a") as f:
            f.write("".join(json.dumps(line, default=str) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())


@dataclass
class Problems:
    """Lines a reader skipped: (file, line number, why), each once however often it was read."""

    lines: list[tuple[str, int, str]] = field(default_factory=list)

    def add(self, item: tuple[str, int, str]) -> None:
        if item not in self.lines:
            self.lines.append(item)

    def summary(self) -> str:
        if not self.lines:
            return ""
        shown = "; ".join(f"{f}:{n} {why}" for f, n, why in self.lines[:5])
        more = f" (+{len(self.lines) - 5} more)" if len(self.lines) > 5 else ""
        return f"skipped {len(self.lines)} unreadable line(s): {shown}{more}"


def read_jsonl(path: Path, problems: Problems | None = None, need: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every JSON object line with the keys `need`; anything else is skipped and noted in `problems`."""
    if not path.exists():
        return []
    with storage(path):
        text = path.read_bytes().decode("utf-8", errors="replace")
    out = []
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        why = None
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                why = f"not a JSON object ({type(obj).__name__})"
            elif any(k not in obj for k in need):
                why = f"missing {[k for k in need if k not in obj]}"
        except json.JSONDecodeError:
            why = "torn or not JSON" + (" (the last line: a write was cut off)" if n == len(lines) else "")
        if why is None:
            out.append(obj)
        elif problems is not None:
            problems.add((path.name, n, why))
    return out


class RunStore:
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self.problems = Problems()
        self._lock_file: Any = None

    @classmethod
    def create(cls, out_dir: Path, suite_meta: dict[str, Any], cells: list[Cell],
               environment: dict[str, Any]) -> "RunStore":
        run_id = new_run_id(suite_meta["name"])
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise StorageError(f"{out_dir}: --out must be a folder, and this is a file")
        store = cls(out_dir / run_id)
        with storage(store.dir):
            store.dir.mkdir(parents=True, exist_ok=False)
        store.lock()
        store.write_meta({"run_id": run_id, "suite": suite_meta, "created_at": dt.datetime.now().isoformat(),
                          "environment": environment, "status": "running",
                          "cells": [c.__dict__ for c in cells]})
        return store

    @classmethod
    def open(cls, run_dir: Path) -> "RunStore":
        store = cls(Path(run_dir))
        if not (store.dir / "run.json").is_file():
            raise StorageError(f"{run_dir}: not a run folder (no run.json)")
        store.meta()  # a torn or foreign run.json is refused here, with its path
        return store

    # ---- one writer -----------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder's write lock (held until the process ends or `unlock`)."""
        with storage(self.dir / ".lock"):
            f = open(self.dir / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunLocked(f"{self.dir}: another lowdim-bench process is writing this run (a second "
                            "--resume, or the app's headless finish); wait for it or stop it first") from None
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # ---- metadata -----------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        path = self.dir / "run.json"
        with storage(path):
            text = path.read_text()
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as e:
            raise StorageError(f"{path}: unreadable run.json ({e.msg} at line {e.lineno}); the records are in "
                               "records.jsonl") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("cells", []), list):
            raise StorageError(f"{path}: not a lowdim-bench run.json (expected an object with a list of cells)")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        text = json.dumps(meta, indent=1, default=str)
        write_atomic(self.dir / "run.json", lambda p: p.write_text(text))

    def set_status(self, status: str) -> None:
        meta = self.meta()
        meta["status"] = status
        meta["updated_at"] = dt.datetime.now().isoformat()
        self.write_meta(meta)

    @property
    def run_id(self) -> str:
        return self.dir.name

    def cells(self) -> list[Cell]:
        out = []
        for i, d in enumerate(self.meta().get("cells", [])):
            try:
                out.append(Cell.from_dict(d))
            except TypeError as e:
                raise StorageError(f"{self.dir / 'run.json'}: cell #{i + 1} is not a cell ({e})") from None
        return out

    # ---- results ------------------------------------------------------------------------------
    def append_cell(self, key: str, attempt: str, status: str, records: list[dict[str, Any]]) -> None:
        _append(self.dir / "records.jsonl", [{**r, "attempt": attempt} for r in records])
        _append(self.dir / "cells.jsonl", [{"key": key, "attempt": attempt, "status": status}])

    def finished(self) -> dict[str, dict[str, Any]]:
        """Cell key -> its last finished attempt ({key, attempt, status})."""
        lines = read_jsonl(self.dir / "cells.jsonl", self.problems, need=("key", "attempt", "status"))
        return {c["key"]: c for c in lines if isinstance(c["key"], str)}

    def records(self) -> list[dict[str, Any]]:
        """Records of finished cells, last attempt only."""
        attempts = {c["attempt"] for c in self.finished().values()}
        return [r for r in read_jsonl(self.dir / "records.jsonl", self.problems) if r.get("attempt") in attempts]
