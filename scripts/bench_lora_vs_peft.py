"""Latency of our LoRA against Hugging Face PEFT's LoRA on the same models, same rank and targets.

Both wrap every Linear of the task's model (digits-mlp's MLP, stdlib-lm's decoder) at one rank.
Per model it times, interleaved in one process (A B A B, so a busy neighbour core hits both
alike): unmerged inference (eval, no_grad) and one training step (zero_grad, forward, loss,
backward, AdamW step). It prints p50 per call and the ratio PEFT / ours (above 1: PEFT slower).
Needs the extra: pip install 'lowdim-bench[peft]'.

    python scripts/bench_lora_vs_peft.py [--rank 8] [--repeats 200] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
from typing import Callable

import torch

from lowdim_bench.api import ApplyContext, Task, trainable
from lowdim_bench.measure.latency import eval_mode, module_modes, set_threads, time_interleaved
from lowdim_bench_builtin.methods.lora import LoraMethod
from lowdim_bench_builtin.methods.peft_bridge import PeftLora
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
from lowdim_bench_builtin.tasks.stdlib_lm import StdlibLM

CPU = torch.device("cpu")


def step_fn(task: Task, model: torch.nn.Module, batch) -> Callable[[], None]:
    opt = torch.optim.AdamW(trainable(model), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        task.loss(model, batch).backward()
        opt.step()

    return step


def bench(label: str, task: Task, batch_size: int, rank: int, warmup: int, repeats: int) -> None:
    base = task.make_model(0)
    ctx = ApplyContext(seed=0, device=CPU, task=task)
    models = {"ours": LoraMethod().apply(base, rank, ctx), "peft": PeftLora().apply(base, rank, ctx)}
    assert sum(p.numel() for p in trainable(models["ours"])) == sum(p.numel() for p in trainable(models["peft"]))
    (x,) = task.example_inputs(batch_size, CPU)
    batch = task.example_batch(batch_size, CPU)

    with eval_mode(models["ours"]), eval_mode(models["peft"]), torch.no_grad():
        infer = time_interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, warmup, repeats, CPU)
    train_models = {k: copy.deepcopy(m) for k, m in models.items()}
    with module_modes(train_models["ours"], True), module_modes(train_models["peft"], True):
        steps = time_interleaved({k: step_fn(task, m, batch) for k, m in train_models.items()}, warmup, repeats, CPU)

    for phase, stats in (("inference (unmerged)", infer), ("training step", steps)):
        ours, peft = stats["ours"].p50, stats["peft"].p50
        print(f"{label:34} {phase:21} ours p50 {ours * 1e6:9.1f} us   peft p50 {peft * 1e6:9.1f} us   "
              f"peft/ours {peft / ours:5.2f}   (n={stats['ours'].n}, spread ours {stats['ours'].spread:.2f} "
              f"peft {stats['peft'].spread:.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    args = p.parse_args()
    threads = set_threads(args.threads)
    print(f"torch {torch.__version__}, threads {threads}, rank {args.rank}, repeats {args.repeats}")
    try:
        import peft

        print(f"peft {peft.__version__}")
    except ImportError:
        raise SystemExit("peft is not installed: pip install 'lowdim-bench[peft]'")
    bench("digits-mlp (64-128-128-10) b=64", DigitsTask(), 64, args.rank, args.warmup, args.repeats)
    bench("digits-mlp (64-128-128-10) b=1", DigitsTask(), 1, args.rank, args.warmup, args.repeats)
    lm = StdlibLM()
    bench(f"stdlib-lm (d{lm.config.d_model} L{lm.config.n_layers} T{lm.context}) b=16", lm, 16, args.rank,
          args.warmup, args.repeats // 4)


if __name__ == "__main__":
    main()
