"""Does the latency protocol hold under load? The same figure timed quietly and beside two busy processes.

The figure is what the results table shows: the interleaved latency ratio of a method to its
reference (here weight-SVD at rank `--rank` of a 512-wide MLP over the MLP itself, batch
`--batch`), timed A B A B in one process at one intra-op thread (the protocol's default), plus
each p50 for comparison. Phases alternate quiet, loaded, quiet, loaded, ... (`--rounds` each),
so a drift of the machine hits both; "loaded" starts two processes that spin on one core each
(pure Python, no sleeping) and stops them afterwards. Printed: per phase the median over rounds
of both p50s and the ratio, then loaded / quiet for each (target for the ratio: within 15%) and
the load average before and after.

    python scripts/bench_latency_under_load.py [--rounds 5 --calls 200 --rank 32 --batch 64 --threads 1]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics

import torch
from torch import nn

from lowdim_bench.measure.latency import set_threads, time_interleaved


def spin() -> None:
    while True:  # busy on one core until killed
        pass


def models(width: int, depth: int, rank: int) -> tuple[nn.Module, nn.Module]:
    """A dense MLP and its rank-r factorisation (each Linear -> Linear(d, r) then Linear(r, d))."""
    torch.manual_seed(0)
    dense = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())]).eval()
    low = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, rank, bias=False),
                                                              nn.Linear(rank, width), nn.ReLU())]).eval()
    return dense, low


def one_round(fns: dict, warmup: int, calls: int) -> tuple[float, float, float]:
    with torch.no_grad():
        stats = time_interleaved(fns, warmup, calls, "cpu")
    ref, low = stats["reference"].p50, stats["method"].p50
    return ref, low, low / ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="quiet/loaded pairs")
    ap.add_argument("--calls", type=int, default=200, help="timed calls per model per round")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (the protocol's default: 1)")
    ap.add_argument("--busy", type=int, default=2, help="busy processes in the loaded phase")
    args = ap.parse_args()
    if min(args.rounds, args.calls, args.busy) < 1:
        raise SystemExit("--rounds, --calls and --busy must be >= 1")

    threads = set_threads(args.threads)
    dense, low = models(args.width, args.depth, args.rank)
    x = torch.randn(args.batch, args.width)
    fns = {"reference": lambda: dense(x), "method": lambda: low(x)}
    load_before = os.getloadavg()
    results: dict[str, list[tuple[float, float, float]]] = {"quiet": [], "loaded": []}
    ctx = mp.get_context("spawn")
    for _ in range(args.rounds):
        results["quiet"].append(one_round(fns, args.warmup, args.calls))
        busy = [ctx.Process(target=spin, daemon=True) for _ in range(args.busy)]
        for p in busy:
            p.start()
        try:
            results["loaded"].append(one_round(fns, args.warmup, args.calls))
        finally:
            for p in busy:
                p.kill()
                p.join()
    load_after = os.getloadavg()

    print(f"MLP {args.depth} x {args.width}, batch {args.batch}: dense (reference) vs rank-{args.rank} factors "
          f"(method); {threads} thread(s), {args.calls} interleaved calls per round, {args.rounds} rounds per phase, "
          f"{args.busy} busy processes when loaded, {os.cpu_count()} cores")
    med = {ph: [statistics.median(r[i] for r in rs) for i in range(3)] for ph, rs in results.items()}
    print(f"{'phase':8} {'reference p50 ms':>17} {'method p50 ms':>14} {'ratio':>7}")
    for ph, (ref, m, ratio) in med.items():
        print(f"{ph:8} {ref * 1e3:17.4f} {m * 1e3:14.4f} {ratio:7.3f}")
    q, ld = med["quiet"], med["loaded"]
    print(f"loaded / quiet: reference p50 {ld[0] / q[0]:.3f}, method p50 {ld[1] / q[1]:.3f}, "
          f"ratio {ld[2] / q[2]:.3f} (target for the ratio: within 0.85-1.15)")
    print("per round ratios: quiet " + " ".join(f"{r[2]:.3f}" for r in results["quiet"])
          + " | loaded " + " ".join(f"{r[2]:.3f}" for r in results["loaded"]))
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
    main()
