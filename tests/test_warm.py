"""Warm cell processes (run/warm.py): each cell still runs in a process of its own that has run no
other cell, forked from a server that imported torch, the registry and the plugins once; a
crash does not reach the next cell or the server; the processes die with the runner."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import write_suite
from lowdim_bench.core import events as ev
from lowdim_bench.plan import expand
from lowdim_bench.registry import Registry
from lowdim_bench.run import warm
from lowdim_bench.run.executor import LocalExecutor
from lowdim_bench.run.runner import run_cells
from lowdim_bench.run.worker import execute
from lowdim_bench.suite import load_suite

needs_warm = pytest.mark.skipif(not warm.available(), reason="no fork server on this platform (cells spawn)")

FRESH = """
name = "fresh"
seeds = [0, 1]
measure = ["params", "memory"]
timeout_s = 120
tasks = ["tiny"]
[protocol]
memory_batch_size = 8
train_batch_size = 8
[methods.fake-die]
[methods.fake-fresh]
"""


def _run(tmp_path: Path, body: str, executor: LocalExecutor):
    reg = Registry.load()
    suite = load_suite(write_suite(tmp_path / "s.toml", body), reg)
    seen: list = []
    res = run_cells(expand(suite, reg), {"name": suite.name, "version": suite.version}, reg,
                    out_dir=tmp_path / "reports", listeners=[seen.append], executor=executor)
    return res, seen, pl.read_parquet(res.run_dir / "records.parquet")


def test_start_method_defaults_to_warm_and_the_environment_can_say_spawn(monkeypatch) -> None:
    monkeypatch.delenv(warm.ENV_START, raising=False)
    assert warm.start_method() == ("warm" if warm.available() else "spawn")
    assert warm.start_method("spawn") == "spawn"
    monkeypatch.setenv(warm.ENV_START, "spawn")
    assert warm.start_method("warm") == "spawn"
    monkeypatch.setenv(warm.ENV_START, "forky")
    with pytest.raises(ValueError, match="LOWDIM_BENCH_START='forky': expected one of warm, spawn"):
        warm.start_method()


def test_a_server_serves_one_environment_and_one_version_of_the_plugin_source(tmp_path, monkeypatch) -> None:
    plugin = tmp_path / "my_warm_plugin.py"
    plugin.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LOWDIM_BENCH_PLUGIN_MODULES", "my_warm_plugin")
    first = warm.fingerprint()
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "something else")  # read at run time: a child gets it anew
    monkeypatch.setenv("_RJEM_MALLOC_CONF", "set by polars on import")
    assert warm.fingerprint() == first
    stamp = warm.code_stamp()
    os.utime(plugin, ns=(time.time_ns(), time.time_ns() + 10**9))  # the plugin was edited
    assert warm.code_stamp() != stamp and warm.fingerprint() != first
    again = warm.fingerprint()
    monkeypatch.setenv("LOWDIM_BENCH_BLOCK_PLUGINS", "lora")  # read when the server loads the plugins
    assert warm.fingerprint() != again


@needs_warm
def test_a_server_preloads_the_plugins_heavy_modules_and_survives_a_broken_one(fake_plugins) -> None:
    """`Task.preload`/`Method.preload` (transformers: ~5 s a cell): imported once in a server of
    their own; one that raises at import is left for the cell to import and report."""
    import warm_probe

    names = ("xml.dom.minidom", "warm_probe_broken")
    got = []
    for preload in ((), names):
        ctx = warm.context("warm", preload=preload)
        q = ctx.Queue()
        p = ctx.Process(target=warm_probe.modules_probe, args=(q, names), daemon=True)
        p.start()
        got.append(q.get(timeout=120))
        p.join(30)
        assert p.exitcode == 0
    assert got[0]["xml.dom.minidom"] is False and got[1]["xml.dom.minidom"] is True
    assert got[1]["warm_probe_broken"] is False
    assert got[0]["ppid"] != got[1]["ppid"]  # another list, another server


@pytest.mark.slow
@needs_warm
def test_the_server_imported_everything_and_initialised_no_cuda(fake_plugins, monkeypatch) -> None:
    ctx = warm.context("warm")
    monkeypatch.setenv("WARM_PROBE_VALUE", "set after the server started")
    q = ctx.Queue()
    import warm_probe

    p = ctx.Process(target=warm_probe.probe, args=(q,), daemon=True)
    p.start()
    got = q.get(timeout=120)
    p.join(30)
    assert p.exitcode == 0
    assert got["preloaded"] and got["dynamo"] and not got["textual"]
    assert "fake-fresh" in got["methods"]  # the plugins of this environment, loaded once in the server
    assert not got["cuda_initialised"]
    assert got["env"] == "set after the server started"  # a child runs in the environment of now, as if spawned
    assert got["ppid"] != os.getpid()  # forked by the server, not by us
    assert got["server_python_threads"] == 1  # a process that forks keeps no Python thread of its own


@pytest.mark.slow
@needs_warm
def test_every_cell_gets_a_fresh_process_and_a_crash_stays_in_its_cell(tmp_path, fake_plugins) -> None:
    executor = LocalExecutor(jobs=1, start="warm")
    assert executor.start == "warm"
    res, seen, df = _run(tmp_path, FRESH, executor)
    assert (res.ok, res.failed) == (2, 2)
    failed = df.filter(pl.col("status") == "failed").to_dicts()
    assert {r["method"] for r in failed} == {"fake-die"} and all("killed by SIGKILL" in r["error"] for r in failed)
    fresh = df.filter(pl.col("method") == "fake-fresh")
    assert sorted(set(fresh["seed"])) == [0, 1] and set(fresh["status"]) == {"ok"}
    assert {"memory_peak", "params_total"} <= set(fresh["metric"])
    # one cell at a time: the killed cells came first, and the fresh cells after them still started
    # from the same server, each in a process of its own that reported in
    order = [(type(e).__name__, e.label.split("/")[1]) for e in seen
             if isinstance(e, (ev.CellStarted, ev.CellFinished))]
    first_crash = order.index(("CellFinished", "fake-die[adapt] full seed=0"))
    assert first_crash < order.index(("CellStarted", "fake-fresh[adapt] full seed=0"))
    assert len(executor.start_latency_s) == 4


@pytest.mark.slow
def test_the_fresh_check_fails_when_cells_share_a_process(tmp_path, fake_plugins) -> None:
    """The control for the test above: two cells in one process trip fake-fresh."""
    reg = Registry.load()
    suite = load_suite(write_suite(tmp_path / "s.toml", FRESH.replace("[methods.fake-die]\n", "")), reg)
    cells = expand(suite, reg)[:2]
    import fakeplugins

    fakeplugins.APPLIED = 0
    sent: list = []
    for c in cells:
        execute(c, "r", sent.append, registry=reg, device="cpu")
    outcome = [e for e in sent if isinstance(e, (ev.CellDone, ev.CellFailed))]
    assert isinstance(outcome[0], ev.CellDone)
    assert isinstance(outcome[1], ev.CellFailed) and "already ran 1 other cell" in outcome[1].reason


@pytest.mark.slow
def test_spawned_cells_still_work(tmp_path, fake_plugins, monkeypatch) -> None:
    monkeypatch.setenv(warm.ENV_START, "spawn")
    executor = LocalExecutor(jobs=1)
    assert executor.start == "spawn"
    res, _, df = _run(tmp_path, FRESH.replace("seeds = [0, 1]", "seeds = [0]").replace("[methods.fake-die]\n", ""),
                      executor)
    assert (res.ok, res.failed) == (1, 0) and "memory_peak" in set(df["metric"])


@pytest.mark.slow
@needs_warm
def test_warm_cells_and_their_server_die_with_a_killed_runner(tmp_path, fake_plugins, monkeypatch) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("FAKE_PID_DIR", str(pids))
    suite = write_suite(tmp_path / "s.toml", 'name = "h"\nseeds = [0]\nmeasure = ["params"]\ntimeout_s = 100\n'
                        'tasks = ["tiny"]\n[methods.fake-hang]\n')
    cmd = [sys.executable, "-m", "lowdim_bench.cli", "run", str(suite), "--out", str(tmp_path / "reports")]
    runner = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 150
        while time.time() < deadline and not list(pids.glob("*.pid")):
            time.sleep(0.2)
        found = list(pids.glob("*.pid"))
        assert found, "the hanging cell never started"
        cell = int(found[0].read_text())
        server = int(Path(f"/proc/{cell}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert server != runner.pid  # the cell is the warm server's child, not the runner's
        os.kill(runner.pid, signal.SIGKILL)  # the runner alone, as the kernel's OOM killer would
        runner.wait()
        deadline = time.time() + 20
        while time.time() < deadline and (_alive(cell) or _alive(server)):
            time.sleep(0.2)
        assert not _alive(cell) and not _alive(server)
    finally:
        try:
            os.killpg(runner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _lifetime_probe(parent: int, via: int | None) -> None:
    from lowdim_bench.run import lifetime

    lifetime.die_with_parent(parent, via=via, watchdog=False)
    os._exit(0)


def test_a_forked_cell_checks_the_run_as_well_as_the_process_that_forked_it() -> None:
    """A warm cell's direct parent is its server, not the run: both are checked at start."""
    import multiprocessing as mp

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ctx = mp.get_context("fork")
    for parent, via, code in [(os.getpid(), None, 0), (os.getpid(), os.getpid(), 0),
                              (dead.pid, os.getpid(), 1), (os.getpid(), dead.pid, 1)]:
        proc = ctx.Process(target=_lifetime_probe, args=(parent, via))
        proc.start()
        proc.join(30)
        assert proc.exitcode == code, (parent, via)


def test_the_cli_starts_the_server_before_it_imports_torch() -> None:
    """`lowdim-bench run` starts the warm server first, so its imports run beside the CLI's own; once
    torch is imported here the first cell would wait seconds longer (issue 19)."""
    code = ("import sys; from lowdim_bench.run import warm; seen = []; "
            "warm.prestart = lambda: seen.append('torch' in sys.modules); "
            "from lowdim_bench import cli; cli.main(['run', 'no-such-suite.toml']); print(seen)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1].startswith("[False"), out.stdout + out.stderr[-2000:]
