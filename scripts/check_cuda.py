"""CUDA check for a GPU owner: every installed metric through the real harness on CUDA, and the
CUDA mechanics under them. No CI machine has a GPU, so this is how the CUDA path gets run.

    python scripts/check_cuda.py [--cells 4] [--out /tmp/cuda-check] [--keep]
    python -m pytest -q tests/test_cuda.py          # the same mechanics as unit tests

What it does, printing PASS/FAIL per line and exiting 1 on any FAIL:
1. mechanics: CUDA event timing (a host clock that never moves must not matter; events agree with a
   synchronised wall clock), allocator peaks (allocated >= the tracked peak, reserved >= allocated,
   parameters exact), a warm cell process using CUDA (its server never initialised it).
2. metrics: for each installed metric, a built-in suite that measures it (smoke first), run on
   CUDA through the runner and the local executor (warm cell processes, one cell per device at a
   time, seed 0 only, at most --cells cells per suite besides smoke). Per metric: its cells ok, at
   least one record, every value finite, every record on the cell's CUDA device, and for latency
   and memory their CUDA-specific figures. The records of each metric are told apart by the
   worker's order: one RecordsReady per metric, in the suite's `measure` order, last in a cell.
3. placement: no two cells on one device at once; the interleaved latency pass ran on CUDA.
A metric that no built-in suite measures is listed as UNCHECKED.
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}", flush=True)
    return ok


# ---- 1. mechanics ---------------------------------------------------------------------------------

def mechanics() -> None:
    import torch.nn.functional as F
    from torch import nn

    from lowdim_bench.measure import latency, memory

    dev = torch.device("cuda")
    x = torch.randn(4096, 4096, device=dev)
    stats = latency.time_calls(lambda: x @ x, 5, 30, dev, clock=lambda: 0.0)
    walls = []
    for _ in range(30):
        torch.cuda.synchronize()
        t = time.perf_counter()
        x @ x
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t)
    wall = statistics.median(walls)
    check("event timing: host clock unused", stats.p50 > 0 and stats.n == 30, f"p50 {stats.p50 * 1e3:.3f} ms")
    check("event timing agrees with a synchronised wall clock", 0.3 * wall <= stats.p50 <= 1.2 * wall,
          f"events {stats.p50 * 1e3:.3f} ms, wall {wall * 1e3:.3f} ms")

    model = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)).to(dev)
    xb, yb = torch.randn(512, 2048, device=dev), torch.randint(10, (512,), device=dev)
    opt = torch.optim.AdamW(model.parameters())
    b = memory.measure_train_step(model, lambda: F.cross_entropy(model(xb), yb), opt, device=dev)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    check("allocator: parameters exact", b.parameters == params, f"{b.parameters} B")
    check("allocator: allocated peak >= tracked peak >= its split", (b.cuda_allocated_peak or 0) >= b.peak and
          b.peak == b.parameters + b.gradients + b.optimizer + b.activations + b.other,
          f"tracked {b.peak / 2**20:.1f} MiB, allocated {(b.cuda_allocated_peak or 0) / 2**20:.1f} MiB "
          f"({b.peak_phase})")
    check("allocator: reserved peak >= allocated peak", (b.cuda_reserved_peak or 0) >= (b.cuda_allocated_peak or 0),
          f"reserved {(b.cuda_reserved_peak or 0) / 2**20:.1f} MiB")

    from lowdim_bench.run import warm

    if not warm.available():
        check("warm cell process uses CUDA", True, "no fork server here: cells spawn")
        return
    import check_cuda  # this file as a module: a forked child finds the target by module name, not __main__

    ctx = warm.context("warm")
    q = ctx.Queue()
    p = ctx.Process(target=check_cuda.cuda_child, args=(q,), daemon=True)
    p.start()
    got = q.get(timeout=300)
    p.join(60)
    check("warm cell process uses CUDA", got == 3.0, str(got))


def cuda_child(queue: Any) -> None:
    try:
        queue.put(float(torch.ones(3, device="cuda").sum().item()))
    except Exception as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


# ---- 2. every metric through the harness ---------------------------------------------------------

@dataclass
class Watch:
    """Listens to a run: per cell its RecordsReady batches, and which device slots overlap."""

    batches: dict[str, list[list[dict]]] = field(default_factory=dict)
    busy: dict[str, str] = field(default_factory=dict)
    clashes: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __call__(self, e: Any) -> None:
        from lowdim_bench.core import events as ev

        if isinstance(e, ev.CellStarted):
            if e.slot in self.busy.values():
                self.clashes.append(f"{e.label} on {e.slot}")
            self.busy[e.key] = e.slot
        elif isinstance(e, ev.CellFinished):
            self.busy.pop(e.key, None)
        elif isinstance(e, ev.RecordsReady):
            self.batches.setdefault(e.key, []).append(e.records)
        elif isinstance(e, ev.CellFailed):
            self.failed[e.key] = e.reason.splitlines()[0]


def choose_suites(registry: Any) -> tuple[list[tuple[Path, list[str]]], list[str]]:
    """Built-in suites covering every metric (smoke first), and the metrics none measures."""
    from lowdim_bench.suite import load_suite

    wanted = set(registry.metrics)
    files = sorted(registry.suite_files(), key=lambda f: f.stem != "smoke")
    chosen = []
    for f in files:
        try:
            measure = load_suite(f, registry).measure
        except Exception:
            continue
        new = [m for m in measure if m in wanted]
        if new:
            chosen.append((f, measure))
            wanted -= set(new)
    return chosen, sorted(wanted)


def pick_cells(cells: list, limit: int) -> list:
    """Seed 0, the reference first, then one cell per method until `limit`."""
    seed0 = [c for c in cells if c.seed == min(x.seed for x in cells)]
    picked, methods = [], set()
    for c in sorted(seed0, key=lambda c: not c.reference):
        if len(picked) < limit and c.shown_name not in methods:
            picked.append(c)
            methods.add(c.shown_name)
    return picked


def metric_checks(name: str, recs: list[dict]) -> list[str]:
    """What is wrong with one metric's records of one cell ([] when nothing)."""
    problems = []
    if any(r["value"] is not None and isinstance(r["value"], float) and not math.isfinite(r["value"]) for r in recs):
        problems.append("a non-finite value")
    devices = {r.get("device") for r in recs}
    if not all(str(d).startswith("cuda") for d in devices):
        problems.append(f"records on {sorted(map(str, devices))}")
    by = {(r["metric"], r.get("phase")): r["value"] for r in recs}
    if name == "latency":
        for phase in ("inference", "train_step"):
            p50 = [v for (m, ph), v in by.items() if m == "latency_p50" and ph == phase]
            if not p50 or min(p50) <= 0:
                problems.append(f"no positive latency_p50 for {phase}")
    if name == "memory":
        for phase in ("train_step", "inference"):
            peak, alloc = by.get(("memory_peak", phase)), by.get(("memory_cuda_allocated_peak", phase))
            reserved = by.get(("memory_cuda_reserved_peak", phase))
            if alloc is None or reserved is None:
                problems.append(f"no CUDA allocator peaks for {phase}")
            elif not (alloc >= (peak or 0) and reserved >= alloc):
                problems.append(f"{phase}: allocated {alloc} < tracked {peak} or reserved {reserved} < allocated")
    return problems


def run_suites(limit: int, out: Path) -> None:
    from lowdim_bench.plan import make_plan
    from lowdim_bench.registry import Registry
    from lowdim_bench.run.runner import run_cells
    from lowdim_bench.suite import Overrides

    registry = Registry.load()
    chosen, uncovered = choose_suites(registry)
    for name in uncovered:
        print(f"UNCHECKED  metric {name}: no built-in suite measures it")
    per_metric: dict[str, list[str]] = {}
    for path, measure in chosen:
        plan = make_plan(path, registry, Overrides(device="cuda"))
        cells = plan.cells if path.stem == "smoke" else pick_cells(plan.cells, limit)
        watch = Watch()
        t = time.perf_counter()
        res = run_cells(cells, {**plan.meta, "analyses": {}}, registry, out_dir=out, device="cuda",
                        listeners=[watch])
        check(f"suite {path.stem}: {len(cells)} cell(s) ran", res.failed == 0,
              f"{res.ok} ok, {res.failed} failed in {time.perf_counter() - t:.0f} s"
              + "".join(f"\n      {k}: {why}" for k, why in watch.failed.items()))
        check(f"suite {path.stem}: one cell per device at a time", not watch.clashes, "; ".join(watch.clashes))
        for c in cells:
            batches = watch.batches.get(c.key, [])
            if c.key in watch.failed:
                for m in c.measure:
                    per_metric.setdefault(m, []).append(f"{c.label}: cell failed: {watch.failed[c.key]}")
                continue
            for m, recs in zip(c.measure, batches[-len(c.measure):]):
                problems = metric_checks(m, recs) if recs else ["no records"]
                per_metric.setdefault(m, []).extend(f"{c.label}: {p}" for p in problems)
                per_metric.setdefault(m, [])
        if "latency" in measure and path.stem == "smoke":
            import polars as pl

            df = pl.read_parquet(res.run_dir / "records.parquet")
            il = df.filter(pl.col("phase") == "inference_interleaved")
            on_cuda = all(str(d).startswith("cuda") for d in il["device"])
            check("interleaved latency ran on CUDA", len(il) > 0 and on_cuda, f"{len(il)} records")
    for m in sorted(per_metric):
        problems = per_metric[m]
        check(f"metric {m}", not problems, "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=4, help="cells per suite besides smoke (default 4)")
    ap.add_argument("--out", type=Path, help="run folders here (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run folders")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False (a CPU build, or no driver)")
        return 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          + ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())))
    mechanics()
    out = args.out or Path(tempfile.mkdtemp(prefix="cuda-check-"))
    try:
        run_suites(args.cells, out)
    finally:
        if not args.out and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        elif args.out or args.keep:
            print(f"run folders: {out}")
    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
