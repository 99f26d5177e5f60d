"""Harness overhead: one cell's training run under the harness vs the same loop written bare.

The harness run is `lowdim_bench.run.train.train` as a worker calls it (the task's batch stream
and loss, the method's extra_loss/on_step hooks, the finite-loss check, the progress callback
every `log_every` steps, here into a queue as the worker's goes into a multiprocessing queue).
The bare run is the same math in plain PyTorch: the same index stream, cross-entropy, AdamW,
warm-up + cosine schedule and gradient clipping, nothing else. Both start from copies of the same
adapted model. Pairs alternate which runs first; the figure is the median over pairs of
harness seconds / bare seconds. Target: overhead < 3% (ratio < 1.03). Beside the wall-clock ratio
the script prints the same ratio in process CPU time, which a busy neighbour disturbs less (on a
shared machine the wall ratio of one pair can be off by 2x either way; read both with the load).

    python scripts/bench_overhead.py [--method lora --rank 8 --steps 300 --pairs 9]
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import queue
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext
from lowdim_bench.measure.latency import set_threads
from lowdim_bench.registry import Registry
from lowdim_bench.run.train import train


def bare_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int, lr: float,
               weight_decay: float, warmup_frac: float, grad_clip: float | None, seed: int) -> float:
    """The loop without the harness; returns the final loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = int(warmup_frac * steps)

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)
    buffer = torch.empty(0, dtype=torch.long)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        while buffer.numel() < batch_size:
            buffer = torch.cat([buffer, torch.randperm(len(y), generator=gen)])
        idx, buffer = buffer[:batch_size], buffer[batch_size:]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
    return float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="lora")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="default: the task's finetune recipe")
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    threads = set_threads(args.threads)
    reg = Registry.load()
    task = reg.task("digits-mlp").cls()
    method = reg.method(args.method).cls()
    cpu = torch.device("cpu")
    split = task.splits("target", 0)["train"]
    recipe = task.recipe("finetune")
    if args.steps:
        recipe = recipe.replace(steps=args.steps)
    start = task.make_model(0)
    ctx = ApplyContext(seed=0, device=cpu, task=task)
    adapted = method.apply(start, args.rank if method.knob else None, ctx)

    q: queue.SimpleQueue = queue.SimpleQueue()

    def timed(fn) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one call."""
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w0, time.process_time() - c0

    def harness() -> tuple[float, float]:
        model = copy.deepcopy(adapted)
        return timed(lambda: train(model, task, method, split, recipe, 0, cpu,
                                   lambda s, n, loss: q.put(("progress", "train", s, n, loss))))

    def bare() -> tuple[float, float]:
        model = copy.deepcopy(adapted)
        return timed(lambda: bare_train(model, split.x, split.y, recipe.steps, recipe.batch_size, recipe.lr,
                                        recipe.weight_decay, recipe.warmup_frac, recipe.grad_clip, 0))

    harness(), bare()  # warm-up: lazy imports, allocator, first-call costs
    load_before = os.getloadavg()
    ratios, cpu_ratios, hs, bs = [], [], [], []
    for i in range(args.pairs):
        if i % 2 == 0:
            (h, hc), (b, bc) = harness(), bare()
        else:
            (b, bc), (h, hc) = bare(), harness()
        hs.append(h)
        bs.append(b)
        ratios.append(h / b)
        cpu_ratios.append(hc / bc)
    load_after = os.getloadavg()
    ratio = statistics.median(ratios)
    print(f"digits-mlp / {args.method} rank {args.rank}: {recipe.steps} steps, batch {recipe.batch_size}, "
          f"threads {threads}, {args.pairs} pairs")
    print(f"harness  median {statistics.median(hs):.4f} s   (min {min(hs):.4f}, max {max(hs):.4f})")
    print(f"bare     median {statistics.median(bs):.4f} s   (min {min(bs):.4f}, max {max(bs):.4f})")
    print(f"per-pair ratios: {' '.join(f'{r:.3f}' for r in ratios)}")
    print(f"overhead ratio (median harness/bare): {ratio:.4f}  -> {100 * (ratio - 1):+.2f}% "
          f"({'within' if ratio < 1.03 else 'ABOVE'} the 3% target)")
    print(f"CPU-time ratio (median harness/bare): {statistics.median(cpu_ratios):.4f}  "
          f"(per pair: {' '.join(f'{r:.3f}' for r in cpu_ratios)})")
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")


if __name__ == "__main__":
    main()
