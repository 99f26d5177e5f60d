"""Fastfood projection: time per forward (and forward + backward) and memory vs D, beside dense.

Prints one row per (projection, D, d): median per-call time over `--repeats` calls after a
warm-up, the time per L log2 L element-step (flat when the cost is O(D log D)), the bytes the
projection holds and the peak tensor bytes of one forward (lowdim_bench.measure.memory).
Dense rows run only where D x d floats fit the cap (`--dense-max-mib`).

    python scripts/bench_fastfood.py                    # D = 2^14 .. 2^22, d = 1000 and 100000
    python scripts/bench_fastfood.py --threads 2 --sizes 16384,1048576 --dims 1000
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from lowdim_bench.measure.memory import measure_inference
from lowdim_bench_builtin.methods._projections import make_projection


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def row(kind: str, big: int, small: int, repeats: int, cap: int) -> list[str] | None:
    try:
        p = make_projection(kind, big, small, seed=0, max_bytes=cap)
    except Exception as e:  # the dense cap: shown, not hidden
        return [kind, str(big), str(small), "-", "-", "-", "-", "-", f"refused: {str(e)[:40]}"]
    z = torch.randn(small)
    zg = z.clone().requires_grad_(True)
    with torch.no_grad():
        fwd = median_ms(lambda: p(z), repeats)
    both = median_ms(lambda: p(zg).sum().backward(), repeats)
    peak = measure_inference(p, (z,)).peak
    L = getattr(p, "L", big)
    per = fwd * 1e6 / (L * math.log2(L)) if kind == "fastfood" else fwd * 1e6 / (big * small)
    unit = "ns/(L log L)" if kind == "fastfood" else "ns/(D d)"
    return [kind, str(big), str(small), f"{fwd:.2f}", f"{both:.2f}", f"{per:.3f} {unit}",
            f"{p.held_bytes() / 2**20:.1f}", f"{peak / 2**20:.1f}", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(str(2**k) for k in (14, 16, 18, 20, 22)))
    ap.add_argument("--dims", default="1000,100000")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dense-max-mib", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(s) for s in args.dims.split(",")]
    head = ["projection", "D", "d", "fwd ms", "fwd+bwd ms", "fwd per unit", "held MiB", "fwd peak MiB", "note"]
    rows = []
    for big in sizes:
        for small in dims:
            for kind in ("fastfood", "dense"):
                r = row(kind, big, small, args.repeats, args.dense_max_mib * 2**20)
                if r is not None:
                    rows.append(r)
                    print("  ".join(r), flush=True)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} calls")
    for r in [head, ["-" * w for w in widths]] + rows:
        print("  ".join(c.rjust(w) if 0 < i < 8 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    main()
