"""Latency spread (p90/p50) of dense vs LoRA on digits-mlp, over several repeats in one process.

Each repeat is one interleaved timing (dense, lora, dense, lora, ...) with the harness's latency
protocol (`time_interleaved`: warm-up, then per-call wall times), at each batch size. Printed per
repeat: p50, p90 and spread for both, and lora's p50 over dense's; then the median over repeats.
The models are digits-mlp's default MLP and LoRA (unmerged, as the method deploys by default) at
`--rank`; weights do not change latency, so nothing is trained.

    python scripts/bench_latency_spread.py [--repeats 5 --calls 30 --rank 8 --batch-sizes 1 64]
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from lowdim_bench.api import ApplyContext
from lowdim_bench.measure.latency import eval_mode, set_threads, time_interleaved
from lowdim_bench.registry import Registry
from lowdim_bench.suite import DEFAULT_PROTOCOL


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="independent interleaved timings")
    ap.add_argument("--calls", type=int, default=int(DEFAULT_PROTOCOL["repeats"]), help="timed calls per repeat")
    ap.add_argument("--warmup", type=int, default=int(DEFAULT_PROTOCOL["warmup"]))
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_PROTOCOL["batch_sizes"]))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.repeats < 1 or args.calls < 1:
        raise SystemExit(f"--repeats and --calls must be >= 1, got {args.repeats} and {args.calls}")

    threads = set_threads(args.threads)
    reg = Registry.load()
    task = reg.task("digits-mlp").cls()
    dense = task.make_model(0).eval()
    lora = reg.method("lora").cls().apply(dense, args.rank, ApplyContext(seed=0, device=torch.device("cpu"), task=task)).eval()
    load_before = os.getloadavg()
    print(f"digits-mlp dense vs lora rank {args.rank} (unmerged), threads {threads}, {args.calls} calls per repeat, "
          f"warm-up {args.warmup}")
    for bs in args.batch_sizes:
        (x,) = task.example_inputs(bs, torch.device("cpu"))
        spreads: dict[str, list[float]] = {"dense": [], "lora": []}
        ratios = []
        print(f"\nbatch {bs}:  repeat | dense p50 us  p90 us  p90/p50 | lora p50 us  p90 us  p90/p50 | lora/dense p50")
        for rep in range(args.repeats):
            with eval_mode(dense), eval_mode(lora), torch.no_grad():
                st = time_interleaved({"dense": lambda: dense(x), "lora": lambda: lora(x)}, args.warmup, args.calls, "cpu")
            d, l = st["dense"], st["lora"]
            spreads["dense"].append(d.spread)
            spreads["lora"].append(l.spread)
            ratios.append(l.p50 / d.p50)
            print(f"          {rep + 1:6d} | {d.p50 * 1e6:12.1f} {d.p90 * 1e6:7.1f} {d.spread:8.3f} | "
                  f"{l.p50 * 1e6:11.1f} {l.p90 * 1e6:7.1f} {l.spread:8.3f} | {ratios[-1]:.3f}")
        print(f"  median spread over {args.repeats} repeats: dense {statistics.median(spreads['dense']):.3f} "
              f"(range {min(spreads['dense']):.3f}-{max(spreads['dense']):.3f}), lora "
              f"{statistics.median(spreads['lora']):.3f} (range {min(spreads['lora']):.3f}-{max(spreads['lora']):.3f}); "
              f"lora/dense p50 median {statistics.median(ratios):.3f}")
    after = os.getloadavg()
    print(f"\nload average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f}")


if __name__ == "__main__":
    main()
