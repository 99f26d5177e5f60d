"""Faults that used to lose data, crash a run or print a traceback: each one now ends in a clear
line and loses nothing (issue 10). One test per fault; slow ones spawn real runs."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import TESTS, write_suite
from lowdim_bench import report
from lowdim_bench.cli import main
from lowdim_bench.core import records
from lowdim_bench.core.cells import Cell
from lowdim_bench.core.store import RunLocked, RunStore, StorageError
from lowdim_bench.registry import PluginInfo, Registry, UnknownName


def cell(seed: int = 0) -> Cell:
    return Cell(suite="s", suite_version="1", task="tiny", task_options={}, method="fake-head", hparams={},
                kind="adapt", budget=None, knob=None, seed=seed, device="cpu")


def new_store(tmp_path: Path, cells: list[Cell]) -> RunStore:
    return RunStore.create(tmp_path / "reports", {"name": "s", "version": "1"}, cells, {})


def ok_records(c: Cell, quality: float = 0.5) -> list[dict]:
    base = records.origin(c, "r", {})
    from lowdim_bench.api import Measurement

    return [records.ok(base, Measurement("quality", quality, "fraction", higher_is_better=True))]


# ---- the store ------------------------------------------------------------------------------------
def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path):
    a, b = cell(0), cell(1)
    store = new_store(tmp_path, [a, b])
    store.append_cell(a.key, "a1", "ok", ok_records(a))
    for name in ("records.jsonl", "cells.jsonl"):  # a kill (or a full disk) mid-write
        with (store.dir / name).open("a") as f:
            f.write('{"key": "torn", "attem')
    store.append_cell(b.key, "b1", "ok", ok_records(b, 0.7))
    assert set(store.finished()) == {a.key, b.key}
    assert sorted(r["value"] for r in store.records()) == [0.5, 0.7]
    assert not store.problems.lines  # the torn bytes were cut, not glued to b's line


def test_a_corrupt_line_in_the_middle_is_skipped_and_reported(tmp_path):
    a, b = cell(0), cell(1)
    store = new_store(tmp_path, [a, b])
    store.append_cell(a.key, "a1", "ok", ok_records(a))
    with (store.dir / "records.jsonl").open("a") as f:
        f.write("#garbage\n[1, 2]\n")
    with (store.dir / "cells.jsonl").open("a") as f:
        f.write('"just a string"\n{"key": 3}\n')
    store.append_cell(b.key, "b1", "ok", ok_records(b, 0.7))
    assert len(store.records()) == 2 and set(store.finished()) == {a.key, b.key}
    text = store.problems.summary()
    assert "records.jsonl:2 torn or not JSON" in text and "records.jsonl:3 not a JSON object (list)" in text
    assert "cells.jsonl:2 not a JSON object (str)" in text and "cells.jsonl:3 missing" in text


def test_whole_files_are_written_atomically_and_a_torn_parquet_falls_back_to_the_jsonl(tmp_path):
    a = cell()
    store = new_store(tmp_path, [a])
    store.append_cell(a.key, "a1", "ok", ok_records(a, 0.9))
    store.set_status("finished")
    report.write(store.dir, store.records())
    assert not list(store.dir.glob(".*.tmp"))
    (store.dir / "records.parquet").write_bytes(b"PAR1 torn")
    assert report.load(store.dir)["value"].to_list() == [0.9]
    assert main(["show", str(store.dir)]) == 0


@pytest.mark.parametrize("content, message", [
    ('{"run_id": "x", "cel', "unreadable run.json"),
    ("[1, 2]", "not a lowdim-bench run.json"),
])
def test_a_broken_run_json_is_one_line_and_exit_3(tmp_path, capsys, content, message):
    (tmp_path / "run.json").write_text(content)
    assert main(["show", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "run.json") in err and "Traceback" not in err


def test_a_full_disk_is_a_storage_error_naming_the_file(tmp_path, monkeypatch):
    a = cell()
    store = new_store(tmp_path, [a])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=r"records.jsonl: no space left on the device"):
        store.append_cell(a.key, "a1", "ok", ok_records(a))


def test_out_that_is_a_file_is_refused(tmp_path, fake_plugins, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    suite = write_suite(tmp_path / "s.toml", 'name = "s"\nmeasure = []\ntasks = ["tiny"]\nmethods = ["fake-head"]\n')
    assert main(["run", str(suite), "--out", str(out), "--device", "cpu"]) == 3
    err = capsys.readouterr().err
    assert "--out must be a folder" in err and "Traceback" not in err


def test_a_second_writer_is_refused(tmp_path):
    store = new_store(tmp_path, [cell()])
    other = RunStore.open(store.dir)
    with pytest.raises(RunLocked, match="another lowdim-bench process is writing this run"):
        other.lock()
    store.unlock()
    other.lock()  # free again once the first writer is done
    other.unlock()


# ---- plugins --------------------------------------------------------------------------------------
def test_a_hook_calling_sys_exit_or_raising_keyboardinterrupt_breaks_only_its_plugin():
    from types import SimpleNamespace

    from lowdim_bench.hookspecs import hookimpl
    from lowdim_bench_builtin.methods import dense

    @hookimpl
    def register_methods(register):
        sys.exit(3)

    @hookimpl
    def register_tasks(register):
        raise KeyboardInterrupt

    exits = SimpleNamespace(register_methods=register_methods)
    interrupts = SimpleNamespace(register_tasks=register_tasks)
    reg = Registry.from_objects({"exits": exits, "interrupts": interrupts, "dense": dense})
    assert {p.name for p in reg.broken} == {"exits", "interrupts"}
    assert "SystemExit" in reg.plugins["exits"].error and "KeyboardInterrupt" in reg.plugins["interrupts"].error
    assert "dense" in reg.methods


def test_an_unknown_method_whose_plugin_failed_says_so():
    reg = Registry()
    reg.plugins["dora"] = PluginInfo("dora", "lowdim_bench_dora", "lowdim-bench-dora", "0.1", status="broken",
                                     error="import of 'lowdim_bench_dora' failed:\nImportError: no module peft")
    with pytest.raises(UnknownName, match=r"method 'dora' comes from plugin 'dora', which failed to load: "
                                          r"ImportError: no module peft"):
        reg.method("dora")
    with pytest.raises(UnknownName, match=r"unknown method 'lroa'.*1 plugin\(s\) failed to load and may provide it"):
        reg.method("lroa")


def test_resuming_after_a_plugin_was_uninstalled_is_a_clear_error(tmp_path, capsys, fake_plugins):
    c = cell()
    c.method = "gone-method"
    store = new_store(tmp_path, [c])
    store.unlock()
    assert main(["run", "--resume", str(store.dir)]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume {store.dir}" in err and "unknown method 'gone-method'" in err and "Traceback" not in err


def test_error_text_is_capped_head_and_tail_kept():
    text = "reason\n" + "x" * 5_000_000 + "\nwhere it broke"
    rec = records.failed({"run_id": "r"}, text)
    assert len(rec["error"]) < 21_000 and rec["error"].startswith("reason") and rec["error"].endswith("where it broke")


def test_a_failed_interleave_group_never_breaks_the_summary():
    rows = ok_records(cell()) + [records.failed(records.pseudo("r", "interleave:tiny", task="tiny", method="(interleave)",
                                                               phase="inference_interleaved"), "boom")]
    s = report.summary(report.to_frame(rows))
    assert s["method"].to_list() == ["fake-head"]


def test_a_baseline_that_is_not_a_finished_run_is_refused(tmp_path, capsys):
    a = cell()
    store = new_store(tmp_path, [a])
    store.append_cell(a.key, "a1", "ok", ok_records(a))
    report.write(store.dir, store.records())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(empty), str(store.dir)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["compare", str(store.dir), str(store.dir)]) == 2  # status is still "running"
    assert "BASE is not a finished run (status 'running'" in capsys.readouterr().err


def test_an_unwritable_cache_runs_uncached(tmp_path, monkeypatch):
    import torch

    from lowdim_bench.run import cache

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LOWDIM_BENCH_CACHE", str(blocker))
    from fakeplugins import TinyTask

    notes: list[str] = []
    model, hit = cache.cached_model(TinyTask(), "target", 0, "v", lambda: torch.nn.Linear(2, 2), notes=notes)
    assert isinstance(model, torch.nn.Linear) and hit is False and "not writable" in notes[0]


# ---- workers and the CLI in real processes ------------------------------------------------------
SLOW = 'name = "slow"\nseeds = [0, 1, 2, 3]\nmeasure = []\ntasks = ["tiny"]\n[methods.fake-slow]\n'


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    e = {**os.environ, "LOWDIM_BENCH_PLUGIN_MODULES": "fakeplugins",
         "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.Popen([sys.executable, "-m", "lowdim_bench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e, cwd=tmp_path)


def _wait_for(path_glob, tmp_path: Path, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = list(tmp_path.glob(path_glob))
        if hits and hits[0].stat().st_size > 0:
            return hits[0]
        time.sleep(0.2)
    raise AssertionError(f"nothing matched {path_glob} in {timeout} s")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_cancels_cleanly_and_prints_the_resume_command(tmp_path):
    suite = write_suite(tmp_path / "s.toml", SLOW)
    proc = _cli(tmp_path, "run", str(suite), "--out", "r", "--device", "cpu", FAKE_SLOW_SECONDS="4")
    cells = _wait_for("r/*/cells.jsonl", tmp_path)  # one cell finished
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "resume with: lowdim-bench run --resume" in err
    meta = json.loads((cells.parent / "run.json").read_text())
    assert meta["status"] == "cancelled"
    statuses = [json.loads(line)["status"] for line in cells.read_text().splitlines()]
    assert statuses and set(statuses) == {"ok"}  # the cancelled cell left no failed record


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killing_the_parent_alone_takes_its_workers_down(tmp_path):
    suite = write_suite(tmp_path / "s.toml", 'name = "h"\nmeasure = []\ntimeout_s = 600\ntasks = ["tiny"]\n'
                                             '[methods.fake-hang]\n')
    proc = _cli(tmp_path, "run", str(suite), "--out", "r", "--device", "cpu")
    deadline = time.monotonic() + 240
    workers: list[int] = []
    while time.monotonic() < deadline and not workers:
        time.sleep(0.5)
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        for k in kids:  # the worker runs `multiprocessing.spawn`; the resource tracker does not
            cmd = Path(f"/proc/{k}/cmdline").read_bytes() if Path(f"/proc/{k}/cmdline").exists() else b""
            if b"spawn_main" in cmd:
                workers.append(int(k))
    assert workers, "no worker process appeared"
    time.sleep(2.0)  # the worker is inside apply now (fake-hang sleeps 120 s)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and b"zombie" not in Path(f"/proc/{w}/status").read_bytes().lower()]
    assert not alive, f"workers outlived their parent: {alive}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_resume_of_one_run_is_refused_while_the_first_runs(tmp_path):
    suite = write_suite(tmp_path / "s.toml", SLOW)
    first = _cli(tmp_path, "run", str(suite), "--out", "r", "--device", "cpu", FAKE_SLOW_SECONDS="3")
    run_json = _wait_for("r/*/run.json", tmp_path)
    second = _cli(tmp_path, "run", "--resume", str(run_json.parent), "--device", "cpu")
    out, err = second.communicate(timeout=240)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=240)
    assert second.returncode == 3 and "another lowdim-bench process is writing this run" in err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_running_out_of_memory_in_apply_is_reported_as_out_of_memory(tmp_path, fake_plugins):
    suite = write_suite(tmp_path / "s.toml", 'name = "m"\nmeasure = []\ntasks = ["tiny"]\n[methods.fake-real-oom]\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 1
    run = next((tmp_path / "r").iterdir())
    df = pl.read_parquet(run / "records.parquet")
    error = df.filter(pl.col("status") == "failed")["error"][0]
    assert error.startswith("out of memory"), error[:300]
