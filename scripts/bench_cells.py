"""Cell start-up cost: a suite end to end against the work inside its cells (issue 19).

Prints, from one run of this script:
- work: every cell of the suite run inside this already-warm process, one after another, with
  the thread count a cell gets under --jobs, after one untimed pass (which fills the base-model
  cache and pays first-call costs); summed. What the cells cost without any process start.
- per executor, `lowdim-bench run SUITE --jobs N` as a user runs it, in a fresh process (the
  CLI's own start-up included): its wall time and the ratio wall / work; the sum of the cells'
  durations as the runner saw them; cell start latency (local: from the executor starting a
  cell's process to that process reporting in; Ray: from submitting the task to its first event,
  which for the first wave includes starting Ray's workers); and for Ray, whether its records
  are those of the local run (values aside). Executors: spawn (a new interpreter per cell: the
  start before issue 19), warm (forked from a warm server: the default), ray (a local instance).

Target (issue 19): on a quiet 2-core machine, warm wall <= 1.5 x work. Quote it with the load
(`uptime`, printed before and after); figures from a busy machine say little.

    python scripts/bench_cells.py [--suite suites/smoke.toml] [--jobs 2] [--executors spawn,warm,ray]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---- the child: one CLI run, instrumented ---------------------------------------------------------

def child(mode: str, suite: str, jobs: int, out: str, report: str) -> int:
    """`lowdim-bench run` in this process, noting the executor it made and when each cell started."""
    if mode == "spawn":
        os.environ["LOWDIM_BENCH_START"] = "spawn"
    from lowdim_bench import cli
    from lowdim_bench.run import warm

    if mode == "warm":
        warm.prestart()  # what cli.main does first; the spies below import torch before it would
    from lowdim_bench.core import events as ev
    from lowdim_bench.run import runner

    made, timeline, t0 = [], [], time.monotonic()
    make = runner.make_executor

    def spy(*args, **kwargs):
        t = time.monotonic()
        made.append(make(*args, **kwargs))
        timeline.append(("executor_ready", "", time.monotonic() - t))
        return made[-1]

    def listen(e) -> None:
        if isinstance(e, (ev.CellStarted, ev.CellFinished, ev.RunStarted, ev.RunFinished)):
            timeline.append((type(e).__name__, getattr(e, "key", ""), time.monotonic() - t0))

    run_cells = runner.run_cells
    runner.make_executor = spy
    runner.run_cells = lambda *a, **k: run_cells(*a, **{**k, "listeners": [*k.get("listeners", []), listen]})
    argv = ["run", suite, "--jobs", str(jobs), "--out", out, "--executor", "ray" if mode == "ray" else "local"]
    code = cli.main(argv)
    latency = dict(getattr(made[0], "start_latency_s", {})) if made else {}
    Path(report).write_text(json.dumps({"code": code, "latency": latency, "timeline": timeline}))
    return code


# ---- the parent -----------------------------------------------------------------------------------

def work_in_process(suite: str, jobs: int) -> tuple[float, int, int]:
    """Seconds of the suite's cells run in this process (second pass), the cell count and threads."""
    from lowdim_bench.measure import roofline
    from lowdim_bench.measure.latency import set_threads
    from lowdim_bench.plan import make_plan
    from lowdim_bench.registry import Registry
    from lowdim_bench.run.executor import device_slots, worker_threads
    from lowdim_bench.run.worker import execute
    from lowdim_bench.suite import Overrides

    registry = Registry.load()
    cells = make_plan(suite, registry, Overrides(device="cpu")).cells
    threads = worker_threads(device_slots("cpu", jobs), int(cells[0].protocol.get("threads", 0)))
    roofline.calibrate("cpu", threads)  # cached, so no run below pays for it
    set_threads(threads)
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for timed in (False, True):
            for cell in cells:
                sent: list = []
                t = time.perf_counter()
                execute(cell, "bench", sent.append, registry=registry, device="cpu", run_dir=tmp)
                if timed:
                    total += time.perf_counter() - t
                if type(sent[-1]).__name__ != "CellDone":
                    raise SystemExit(f"{cell.label} failed in process: {getattr(sent[-1], 'reason', sent[-1])}")
    return total, len(cells), threads


def identity(run_dir: Path) -> set[tuple]:
    import polars as pl

    df = pl.read_parquet(run_dir / "records.parquet")
    cols = ["cell_key", "method", "metric", "phase", "batch_size", "unit", "status", "device", "threads", "knob"]
    return set(df.select(cols).rows()) | {("column", c) for c in df.columns}


def one_run(mode: str, suite: str, jobs: int, tmp: Path) -> dict:
    out, report = tmp / mode, tmp / f"{mode}.json"
    cmd = [sys.executable, __file__, "--child", mode, "--suite", suite, "--jobs", str(jobs), "--out", str(out),
           "--report", str(report)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if not report.exists():
        raise SystemExit(f"{mode}: the run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    got = json.loads(report.read_text())
    got.update(wall=wall, run_dir=next(out.iterdir()), stderr=proc.stderr)
    return got


def handoffs(timeline: list) -> list[float]:
    """For each cell started in a slot another cell freed: seconds from that end to its start
    (ends are matched to starts in order)."""
    ends: list[float] = []
    gaps = []
    for name, _, t in timeline:
        if name == "CellFinished":
            ends.append(t)
        elif name == "CellStarted" and ends:
            gaps.append(t - ends.pop(0))
    return gaps


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    v = sorted(values)
    return f"median {statistics.median(v):.3f} s, min {v[0]:.3f} s, max {v[-1]:.3f} s (n={len(v)})"


def summarise(mode: str, got: dict, work: float, local_ids: set | None) -> list[str]:
    import polars as pl

    df = pl.read_parquet(got["run_dir"] / "records.parquet")
    durations = df.filter(pl.col("duration_s").is_not_null()).group_by("cell_key").agg(pl.col("duration_s").first())
    cells_sum = float(durations["duration_s"].sum())
    rss = df.filter((pl.col("metric") == "memory_process_peak") & (pl.col("phase") == "train_step"))["value"]
    started = [t for name, _, t in got["timeline"] if name == "CellStarted"]
    lines = [f"{mode:>5}: wall {got['wall']:6.1f} s   wall/work {got['wall'] / work:5.2f}x   "
             f"cells' durations summed {cells_sum:6.1f} s   exit {got['code']}"]
    lat = list(got["latency"].values())
    if mode == "ray":
        ready = [t for name, _, t in got["timeline"] if name == "executor_ready"]
        lines.append(f"       Ray ready (start or join) in {ready[0]:.1f} s; task submitted -> cell started "
                     f"(queueing included): {spread(lat)}")
    else:
        lines.append(f"       cell start latency (process started -> it reported in): {spread(lat)}")
    lines.append(f"       hand-off (a cell ended -> the next started): {spread(handoffs(got['timeline']))}; "
                 f"first cell started {started[0]:.1f} s into the run" if started else "       no cell started")
    if len(rss):
        lines.append(f"       memory_process_peak (train step) median {float(rss.median()) / 2**20:.0f} MiB")
    if local_ids is not None:
        mine = identity(got["run_dir"])
        same = "yes" if mine == local_ids else f"NO ({len(mine ^ local_ids)} records differ)"
        lines.append(f"       same records and columns as the warm local run (values aside): {same}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="suites/smoke.toml")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--executors", default="spawn,warm,ray", help="comma-separated: spawn, warm, ray")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.suite, args.jobs, args.out, args.report)
    modes = [m.strip() for m in args.executors.split(",") if m.strip()]
    if "ray" in modes:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray is not installed (pip install 'lowdim-bench[ray]'): skipping --executor ray")
            modes.remove("ray")
    print(f"load before: {uptime()}")
    print(f"cores usable: {len(os.sched_getaffinity(0))}, suite {args.suite}, --jobs {args.jobs}")
    work, n, threads = work_in_process(args.suite, args.jobs)
    print(f" work: {n} cells in this warm process, {threads} thread(s) each: {work:.1f} s "
          f"(median {work / n:.2f} s per cell)")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            runs[mode] = one_run(mode, args.suite, args.jobs, Path(tmp))
            local = identity(runs["warm"]["run_dir"]) if mode == "ray" and "warm" in runs else None
            print("\n".join(summarise(mode, runs[mode], work, local)), flush=True)
    print(f"load after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
