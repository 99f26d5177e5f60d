"""The Python standard library's own .py files as a byte-level corpus (nothing downloads).

The stdlib differs between Python versions and distributions, so everything here is decided
by file contents and a stable hash of each relative path, never by directory listing order:
- a file's split is sha1(relpath) mod 100: below 80 train, below 90 val, else test;
- a byte cap is shared 80/10/10 between the splits, and each split reads its files in order of
  that hash (ties by path), so a smaller cap reads a prefix of the same sequence;
- the fingerprint is sha256 over (relpath, sha256 of the bytes used) of every file read.

Parts: "tests" is every file under a folder named test, tests or idle_test, or named
test_*.py; "library" is the rest. site-packages and dist-packages are never read.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from lowdim_bench.api import PluginError

PARTS = ("library", "tests")
SPLITS = ("train", "val", "test")
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


class MissingCorpusPart(PluginError):
    """The stdlib's test folder was stripped by this Python's distribution."""


@dataclass(frozen=True)
class CorpusFile:
    relpath: str
    split: str
    sha256: str  # of the bytes used (a prefix when the cap cut the file)
    n_bytes: int


@dataclass(frozen=True)
class Corpus:
    """One part of the stdlib, read up to a byte cap: split name -> concatenated bytes."""

    part: str
    root: str
    files: tuple[CorpusFile, ...]
    data: dict[str, bytes]

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"python={sys.version_info[:3]} part={self.part}\n".encode())
        for f in self.files:
            h.update(f"{f.relpath}\0{f.sha256}\n".encode())
        return h.hexdigest()


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_test_file(relpath: str) -> bool:
    parts = relpath.split("/")
    return any(p in TEST_DIRS for p in parts[:-1]) or parts[-1].startswith("test_")


def path_hash(relpath: str) -> int:
    return int.from_bytes(hashlib.sha1(relpath.encode()).digest()[:8], "big")


def split_of(relpath: str) -> str:
    bucket = path_hash(relpath) % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def read_order(relpaths: list[str]) -> list[str]:
    """The order files are read in under a cap: by path hash, independent of listing order."""
    return sorted(relpaths, key=lambda p: (path_hash(p), p))


def list_files(root: Path) -> list[str]:
    """Every .py file under root as a sorted posix relative path, skipping SKIP_DIRS."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            if name.endswith(".py"):
                found.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return sorted(found)


def part_files(root: Path, part: str) -> list[str]:
    if part not in PARTS:
        raise PluginError(f"unknown stdlib corpus part {part!r}; known: {list(PARTS)}")
    if part == "tests" and not (root / "test").is_dir():
        raise MissingCorpusPart(
            f"the standard library's test folder {root / 'test'} is missing (some distributions strip it, "
            f"e.g. Debian ships it as the python3-test package); the 'tests' corpus part is unavailable"
        )
    want_tests = part == "tests"
    return [p for p in list_files(root) if is_test_file(p) == want_tests]


def split_budgets(max_bytes: int) -> dict[str, int]:
    """The cap shared 80/10/10, so even a small cap gives every split some text."""
    held_out = max_bytes // 10
    return {"train": max_bytes - 2 * held_out, "val": held_out, "test": held_out}


def build_corpus(root: Path, part: str, relpaths: list[str], max_bytes: int) -> Corpus:
    """Each split reads its files in hash order up to its budget; the last file may be cut."""
    budgets = split_budgets(max_bytes)
    chunks: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    used = {s: 0 for s in SPLITS}
    files: list[CorpusFile] = []
    for rel in read_order(relpaths):
        split = split_of(rel)
        room = budgets[split] - used[split]
        if room <= 0:
            continue
        raw = (root / rel).read_bytes()[:room]
        if not raw:
            continue
        chunks[split].append(raw)
        files.append(CorpusFile(rel, split, hashlib.sha256(raw).hexdigest(), len(raw)))
        used[split] += len(raw)
    return Corpus(part=part, root=str(root), files=tuple(files), data={s: b"".join(c) for s, c in chunks.items()})


@functools.lru_cache(maxsize=8)
def load_corpus(root: str, part: str, max_bytes: int) -> Corpus:
    """A part of the stdlib at `root`, cached per process (tasks are built many times)."""
    if max_bytes <= 0:
        raise PluginError(f"max_corpus_bytes must be positive, got {max_bytes}")
    base = Path(root)
    return build_corpus(base, part, part_files(base, part), max_bytes)
