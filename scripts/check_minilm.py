"""all-MiniLM-L6-v2 through hf-text, measured directly (no harness): load, the probe base, svd and
afm at one budget of the budgeted scope, embedding cosine, FLOPs at the mean and the padded length,
interleaved latency at batch 1 and 32, and optionally a short adapt run (dense vs lora).

    python scripts/check_minilm.py [--budget 0.8] [--max-length 64] [--adapt-steps 30]

Prints each figure with its unit; quote it with the load (`uptime`) it prints first. Budgets count
what `HfText.in_budget` keeps (embeddings out), as real-minilm.toml's cells do.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import torch
from torch import nn

from lowdim_bench.api import ApplyContext
from lowdim_bench.measure import latency
from lowdim_bench.registry import Registry
from lowdim_bench_builtin.methods._skips import skipped
from lowdim_bench_builtin.metrics.text import forward_flops
from lowdim_bench_builtin.tasks.hf_text import HfText


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t: tuple[float, float]) -> str:
    return f"{time.perf_counter() - t[0]:.1f} s wall, {time.process_time() - t[1]:.1f} s CPU"


def in_budget_params(task: HfText, model: nn.Module) -> int:
    """Stored elements (parameters and float buffers) whose names the task counts in budgets."""
    named = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    return sum(t.numel() for n, t in named if task.in_budget(n))


def at_budget(method, task: HfText, base: nn.Module, budget: float, ctx: ApplyContext) -> tuple[nn.Module, int, float]:
    """The largest knob whose applied model keeps in-budget params <= budget x the base's."""
    dense = in_budget_params(task, base)
    lo, hi = (int(v) for v in method.knob_range(base))
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        model = method.apply(base, mid, ctx)
        frac = in_budget_params(task, model) / dense
        if frac <= budget:
            best, lo = (model, mid, frac), mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise SystemExit(f"{method.name}: no knob meets budget {budget}")
    return best


def cosine(task: HfText, model: nn.Module, base_feats: torch.Tensor, split) -> float:
    feats, _ = task.features(model, split)
    return float(torch.nn.functional.cosine_similarity(feats.double(), base_feats.double(), dim=1).mean())


def adapt(task: HfText, base: nn.Module, registry: Registry, steps: int, splits: dict) -> None:
    print(f"\nadapt: {steps} steps, batch {task.options['batch_size']}, AdamW, constant lr (pilot, seed 0)")
    for name, size, lr in (("dense", None, 1e-4), ("lora", 8, 1e-3)):
        method = registry.method(name).cls()
        model = method.apply(base, size, ApplyContext(0, torch.device("cpu"), task)).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        batches = task.batches(splits["train"], int(task.options["batch_size"]), torch.Generator().manual_seed(0))
        t = clock()
        for _ in range(steps):
            loss = task.loss(model, next(batches))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        train_time = since(t)
        acc = task.evaluate(model, splits["test"])
        print(f"  {name:6s} lr {lr:g}: trainable {sum(p.numel() for p in params):,} params, test accuracy {acc:.4f} "
              f"({train_time} for the steps)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=0.8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--adapt-steps", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    print(f"load: {os.getloadavg()}  cores: {os.cpu_count()}  torch threads: {torch.get_num_threads()}  "
          f"torch {torch.__version__}  python {platform.python_version()}")
    registry = Registry.load()
    task = HfText(max_length=args.max_length)

    t = clock()
    folder = task.folder
    print(f"model folder {folder} ({since(t)})")
    t = clock()
    splits = task.splits("target", 0)
    print(f"data: {len(task.data.classes)} classes, sizes {task.data.sizes()}, lengths {task.sequence_lengths()} ({since(t)})")
    t = clock()
    base = task.pretrained("target", 0).eval()
    print(f"pretrained + probe: {since(t)} (train features cached after the first run)")
    t = clock()
    base_acc = task.evaluate(base, splits["test"])
    base_feats, _ = task.features(base, splits["test"])
    print(f"dense (probe) test accuracy {base_acc:.4f}; two passes over the test split: {since(t)}")
    dense_budget = in_budget_params(task, base)
    print(f"parameters: {sum(p.numel() for p in base.parameters()):,} total, {dense_budget:,} in the budget scope "
          f"({task.budget_scope})")

    def calibration():
        batches = task.batches(splits["train"], 64, torch.Generator().manual_seed(0))
        for _ in range(8):
            yield task.model_inputs(next(batches))

    ctx = ApplyContext(0, torch.device("cpu"), task, calibration=calibration, generator=torch.Generator().manual_seed(0),
                       kind="compress")
    models = {"dense": base}
    print(f"\ncompress at budget {args.budget} of the budget scope:")
    for name in ("svd", "afm"):
        t = clock()
        model, knob, frac = at_budget(registry.method(name).cls(), task, base, args.budget, ctx)
        model.eval()
        found = since(t)
        acc = task.evaluate(model, splits["test"])
        cos = cosine(task, model, base_feats, splits["test"])
        skips = skipped(model)
        print(f"  {name}: knob {knob}, in-budget fraction {frac:.4f}, test accuracy {acc:.4f} "
              f"({100 * (acc - base_acc):+.1f} points), embedding cosine {cos:.4f}, {len(skips)} layers left dense; "
              f"search + apply: {found}")
        models[name] = model

    print("\nforward FLOPs per text (executed):")
    lengths = task.sequence_lengths()
    for name, model in models.items():
        cells = []
        for phase, length in lengths.items():
            count = forward_flops(model, task.example_inputs_at(1, length, torch.device("cpu")))
            cells.append(f"{phase} (L={length}) {count.executed / 1e6:.1f} MFLOPs")
        print(f"  {name}: " + ", ".join(cells))

    print(f"\ninterleaved inference latency at the padded length {lengths['padded']} (p50, spread p90/p50):")
    for bs in (1, 32):
        inputs = task.example_inputs(bs, torch.device("cpu"))
        fns = {}
        for name, model in models.items():
            fns[name] = (lambda m=model: m(**inputs.kwargs))
        with torch.no_grad():
            stats = latency.time_interleaved(fns, 2, args.repeats, "cpu", max_seconds=60.0)
        ref = stats["dense"].p50
        print(f"  batch {bs}: " + ", ".join(f"{n} {s.p50 * 1e3:.1f} ms (x{s.p50 / ref:.2f}, spread {s.spread:.2f}, "
                                            f"n={s.n})" for n, s in stats.items()))

    if args.adapt_steps:
        adapt(task, copy.deepcopy(base), registry, args.adapt_steps, splits)
    print(f"\nload at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
