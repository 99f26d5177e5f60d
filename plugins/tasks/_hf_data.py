"""Labelled text for hf-text, from what the machine already has: nothing downloads.

Two sources, both giving a `TextData` (class names and train/val/test lists of (text, label)):
- "stdlib-docstrings": the docstrings of this Python's standard library (modules, classes and
  functions, read with `ast`), labelled by the top-level package they sit in (email, asyncio,
  xml, ...). Only files inside packages count (a top-level module such as os.py would be a class
  of its own); test folders and files are left out, as in _stdlib_corpus. A text that occurs
  under two packages is dropped, a repeated one kept once. The `max_classes` largest packages
  with at least `min_per_class` docstrings are the classes (ties by name).
- a local CSV, TSV or JSONL file of (text, label) rows; an optional `split` column (train, val,
  test) assigns rows, otherwise they are split like the docstrings.

Splits are decided by a stable hash, never by listing order (the stdlib differs between Python
builds): an item's split is sha1(key) mod 100 (below 80 train, below 90 val, else test), where
the key is "relpath::qualified name" for a docstring and the text itself for a file row. A cap
keeps a prefix of each split in hash order, so a smaller cap reads a subset of a larger one.
The fingerprint is sha256 over (key, label, sha256 of the text) of every item kept.
"""
from __future__ import annotations

import ast
import csv
import functools
import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lowdim_bench.api import PluginError
from lowdim_bench.core.environment import cache_dir

from ._stdlib_corpus import is_test_file, list_files, path_hash, split_of

SPLITS = ("train", "val", "test")
STDLIB = "stdlib-docstrings"
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class Item:
    key: str  # what the split hash is taken of
    text: str
    label: str


@dataclass(frozen=True)
class TextData:
    """Class names (sorted) and each split's (text, class index) pairs, in hash order."""

    source: str
    classes: tuple[str, ...]
    splits: dict[str, tuple[tuple[str, int], ...]]
    fingerprint: str

    def sizes(self) -> dict[str, int]:
        return {s: len(v) for s, v in self.splits.items()}


def _fingerprint(source: str, items: list[Item]) -> str:
    h = hashlib.sha256(f"hf-text-data/v1 source={source}\n".encode())
    for it in items:
        h.update(f"{it.key}\0{it.label}\0{hashlib.sha256(it.text.encode()).hexdigest()}\n".encode())
    return h.hexdigest()


def assemble(source: str, items: list[Item], caps: dict[str, int], given_split: dict[str, str] | None = None) -> TextData:
    """Split (by hash, or by `given_split[key]`), cap each split in hash order, index the labels."""
    by_split: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for it in sorted(items, key=lambda i: (path_hash(i.key), i.key)):
        split = given_split[it.key] if given_split else split_of(it.key)
        if len(by_split[split]) < caps[split]:
            by_split[split].append(it)
    kept = [it for s in SPLITS for it in by_split[s]]
    classes = tuple(sorted({it.label for it in kept}))
    if len(classes) < 2:
        raise PluginError(f"{source}: needs at least 2 classes, found {list(classes)}")
    empty = [s for s in SPLITS if not by_split[s]]
    if empty:
        raise PluginError(f"{source}: the {'/'.join(empty)} split(s) are empty ({len(kept)} rows kept); "
                          "give more rows or a `split` column")
    untrained = sorted(set(classes) - {it.label for it in by_split["train"]})
    if untrained:
        raise PluginError(f"{source}: class(es) {untrained} have no row in the train split (the probe could not "
                          "learn them); give more rows of them or a `split` column")
    index = {c: i for i, c in enumerate(classes)}
    splits = {s: tuple((it.text, index[it.label]) for it in by_split[s]) for s in SPLITS}
    return TextData(source, classes, splits, _fingerprint(source, kept))


# ---- the standard library's docstrings ------------------------------------------------------

def _docstrings(tree: ast.Module) -> list[tuple[str, str]]:
    """(qualified name, docstring) of the module and every class and function in it."""
    out: list[tuple[str, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    out.append((name, doc))
                visit(child, name + ".")

    doc = ast.get_docstring(tree)
    if doc:
        out.append(("<module>", doc))
    visit(tree, "")
    return out


def docstring_items(root: Path, min_chars: int, max_chars: int) -> list[Item]:
    """Every docstring of at least `min_chars` characters under a package of the stdlib at `root`
    (whitespace collapsed, cut at `max_chars`), labelled by its top-level package."""
    items: list[Item] = []
    for rel in list_files(root):
        parts = rel.split("/")
        if len(parts) < 2 or is_test_file(rel):
            continue
        try:
            tree = ast.parse((root / rel).read_bytes())
        except (SyntaxError, ValueError):  # a file written for another Python (lib2to3's fixtures)
            continue
        for qualname, doc in _docstrings(tree):
            text = " ".join(doc.split())[:max_chars]
            if len(text) >= min_chars:
                items.append(Item(f"{rel}::{qualname}", text, parts[0]))
    return items


def dedupe(items: list[Item]) -> list[Item]:
    """One item per text; a text found under two labels is dropped (it cannot be told apart)."""
    labels: dict[str, set[str]] = {}
    for it in items:
        labels.setdefault(it.text, set()).add(it.label)
    seen: set[str] = set()
    out = []
    for it in sorted(items, key=lambda i: i.key):
        if len(labels[it.text]) == 1 and it.text not in seen:
            seen.add(it.text)
            out.append(it)
    return out


def cached_docstring_items(root: Path, min_chars: int, max_chars: int) -> list[Item]:
    """`docstring_items`, kept in LOWDIM_BENCH_CACHE/hf-text/ under a key of every file's path, size
    and mtime (parsing the stdlib costs ~7 s of CPU, and every worker process would pay it)."""
    h = hashlib.sha256(f"docstrings/v1 {sys.version} {root} {min_chars} {max_chars}\n".encode())
    for rel in list_files(root):
        st = (root / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    path = cache_dir() / "hf-text" / f"docstrings-{h.hexdigest()[:20]}.json"
    try:
        return [Item(*row) for row in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        pass
    items = docstring_items(root, min_chars, max_chars)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps([[it.key, it.text, it.label] for it in items]))
    os.replace(tmp, path)
    return items


@functools.lru_cache(maxsize=4)
def stdlib_docstrings(root: str, min_chars: int, max_chars: int, min_per_class: int, max_classes: int,
                      caps: tuple[int, int, int]) -> TextData:
    """The docstring corpus of the stdlib at `root` (cached per process: tasks are built often)."""
    items = dedupe(cached_docstring_items(Path(root), min_chars, max_chars))
    counts = Counter(it.label for it in items)
    ranked = sorted((c for c in counts if counts[c] >= min_per_class), key=lambda c: (-counts[c], c))
    chosen = set(ranked[:max_classes])
    if len(chosen) < 2:
        raise PluginError(f"{STDLIB}: only {len(chosen)} package(s) of {root} have >= {min_per_class} docstrings; "
                          "lower min_per_class")
    source = f"{STDLIB} python={sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}"
    return assemble(source, [it for it in items if it.label in chosen], dict(zip(SPLITS, caps)))


# ---- a local CSV / TSV / JSONL file ---------------------------------------------------------

def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row dict) of every row of the file; errors name the file and the line."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise PluginError(f"data file {path}: unknown suffix {path.suffix!r}; expected one of {sorted(SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PluginError(f"data file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise PluginError(f"data file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise PluginError(f"data file {path}: cannot be read ({exc.strerror})") from None
    if kind == "jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PluginError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise PluginError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
            out.append((n, row))
        return out
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if kind == "tsv" else ",")
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise PluginError(f"{path}:{reader.line_num}: {exc}") from None


def load_table(path: str, text_column: str, label_column: str, caps: tuple[int, int, int]) -> TextData:
    """A (text, label) file as TextData. Labels may be strings or integers (kept as their text);
    a `split` column, when present, must say train, val or test on every row."""
    p = Path(path).expanduser()
    rows = _rows(p)
    if not rows:
        raise PluginError(f"data file {p} has no rows")
    items: list[Item] = []
    given: dict[str, str] = {}
    has_split = "split" in rows[0][1]
    seen: dict[str, int] = {}
    for n, row in rows:
        for col in (text_column, label_column):
            if col not in row or row[col] is None:
                raise PluginError(f"{p}:{n}: no {col!r} column (columns: {sorted(k for k in row if k is not None)})")
        text, label = row[text_column], row[label_column]
        if not isinstance(text, str) or not text.strip():
            raise PluginError(f"{p}:{n}: {text_column!r} must be a non-empty string, got {text!r}")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or str(label).strip() == "":
            raise PluginError(f"{p}:{n}: {label_column!r} must be a string or an integer, got {label!r}")
        key = text
        if key in seen:
            raise PluginError(f"{p}:{n}: the same text as line {seen[key]}; remove duplicates so no text "
                              "sits in two splits")
        seen[key] = n
        if has_split:
            split = row.get("split")
            if split not in SPLITS:
                raise PluginError(f"{p}:{n}: split must be one of {list(SPLITS)}, got {split!r}")
            given[key] = split
        items.append(Item(key, text, str(label).strip()))
    return assemble(f"file {p}", items, dict(zip(SPLITS, caps)), given if has_split else None)


def file_fingerprint(path: str) -> str:
    """sha256 of a data file's bytes (what a run's cache key should change with)."""
    p = Path(path).expanduser()
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as exc:
        raise PluginError(f"data file {p}: cannot be read ({exc.strerror})") from None
