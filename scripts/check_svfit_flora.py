"""Small checks of METHODS.md for svfit and flora, in one process, printed as tables.

1. digits-mlp adapt: SVFit vs LoRA at r in {1, 2, 4}, accuracy against trainable parameters,
   and the bottom-r ablation (which="bottom"), which the paper's reasoning says is worse.
2. digits-cnn adapt: FLoRA vs conv-LoRA at equal trainable parameters: LoRA at r in {1, 2, 4}
   sets the budget (its trainable fraction); FLoRA gets the largest rank within it (the
   harness's budget search), so FLoRA never has more trainable parameters than LoRA.

Every run uses the harness's training loop (lowdim_bench.run.train.train) with the task's
finetune recipe, once per learning rate of a grid; the rate is picked on validation and the
test accuracy of that model is reported (mean and spread over seeds), as a suite with [tuning]
would. Bases are pretrained on the source stage per seed. Figures are measured, never typed in.

    python scripts/check_svfit_flora.py --seeds 0 1 2 --threads 1 [--svfit-lr 0.03 0.1 0.3] [--only svfit]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Method, Task
from lowdim_bench.measure.params import count_params
from lowdim_bench.run.budget import search
from lowdim_bench.run.train import train
from lowdim_bench_builtin.methods.dense import DenseMethod
from lowdim_bench_builtin.methods.flora import FloraMethod
from lowdim_bench_builtin.methods.lora import LoraMethod
from lowdim_bench_builtin.methods.svfit import SvfitMethod
from lowdim_bench_builtin.tasks.digits_cnn import DigitsCnnTask
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask

CPU = torch.device("cpu")


@dataclass
class Result:
    label: str
    trainable: list[int]
    test: list[float]
    lr: list[float]


def base_model(task: Task, seed: int, cache: dict) -> nn.Module:
    key = (task.name, seed)
    if key not in cache:
        torch.manual_seed(seed)
        model = task.make_model(seed)
        train(model, task, None, task.splits("source", seed)["train"], task.recipe("pretrain"), seed, CPU)
        cache[key] = model
    return cache[key]


def finetune(task: Task, method: Method, model: nn.Module, seed: int, grid: list[float]) -> tuple[float, float]:
    """(test accuracy, lr) of the best-on-validation run over the grid."""
    splits = task.splits("target", seed)
    best = None
    for lr in grid:
        candidate = copy.deepcopy(model)
        torch.manual_seed(seed)
        train(candidate, task, method, splits["train"], task.recipe("finetune").replace(lr=lr), seed, CPU)
        val = task.evaluate(candidate, splits["val"])
        if best is None or val > best[0]:
            best = (val, task.evaluate(candidate, splits["test"]), lr)
    return best[1], best[2]


def run(task: Task, label: str, make: callable, seeds: list[int], grid: list[float], cache: dict) -> Result:
    """make(base, ctx) -> (method, applied model)."""
    res = Result(label, [], [], [])
    for seed in seeds:
        base = base_model(task, seed, cache)
        method, model = make(base, ApplyContext(seed=seed, device=CPU, task=task))
        res.trainable.append(count_params(model).trainable)
        test, lr = finetune(task, method, model, seed, grid)
        res.test.append(test)
        res.lr.append(lr)
    return res


def fixed(method: Method, knob: float | None):
    return lambda base, ctx: (method, method.apply(base, knob, ctx))


def matched(method: Method, budget: float):
    """The method at the largest knob whose trainable fraction stays within `budget`."""
    def make(base, ctx):
        dense = count_params(base).total
        return method, search(method, base, "adapt", budget, dense, ctx).model
    return make


def show(title: str, rows: list[Result], dense: int) -> None:
    print(f"\n{title}")
    print(f"{'entry':24} {'trainable':>10} {'fraction':>9} {'test acc mean':>14} {'min..max':>13}  lr picked")
    for r in rows:
        t = r.trainable[0]
        spread = f"{min(r.test):.3f}..{max(r.test):.3f}"
        print(f"{r.label:24} {t:>10} {t / dense:>9.4f} {statistics.mean(r.test):>14.3f} {spread:>13}  "
              f"{sorted(set(r.lr))}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2])
    ap.add_argument("--svfit-lr", type=float, nargs="+", default=None,
                    help="svfit's own grid (its trainable values are singular values, of order 1-10; "
                         "measured: it picks the top of the shared grid); default: the shared grid")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["svfit", "flora"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, seeds {args.seeds}, lr grid {args.lr}")
    cache: dict = {}
    start = time.perf_counter()

    if args.only in (None, "svfit"):
        task = DigitsTask()
        dense = count_params(base_model(task, args.seeds[0], cache)).total
        rows = [run(task, "dense (full fine-tune)", fixed(DenseMethod(), None), args.seeds, args.lr, cache)]
        svfit_lr = args.svfit_lr or args.lr
        for r in (1, 2, 4):
            rows.append(run(task, f"lora r={r}", fixed(LoraMethod(), r), args.seeds, args.lr, cache))
            rows.append(run(task, f"svfit r={r}", fixed(SvfitMethod(), r), args.seeds, svfit_lr, cache))
            rows.append(run(task, f"svfit-bottom r={r}", fixed(SvfitMethod(which="bottom"), r),
                            args.seeds, svfit_lr, cache))
        rows.append(run(task, "svfit r=full", fixed(SvfitMethod(), 128), args.seeds, svfit_lr, cache))
        show("digits-mlp adapt (source -> transposed digits): SVFit vs LoRA, bottom-r ablation", rows, dense)

    if args.only in (None, "flora"):
        task = DigitsCnnTask()
        base = base_model(task, args.seeds[0], cache)
        dense = count_params(base).total
        rows = [run(task, "dense (full fine-tune)", fixed(DenseMethod(), None), args.seeds, args.lr, cache)]
        for r in (1, 2, 4):
            lora = LoraMethod()
            budget = count_params(lora.apply(base, r, ApplyContext(0, CPU, task))).trainable / dense
            rows.append(run(task, f"lora r={r} ({budget:.3f})", fixed(lora, r), args.seeds, args.lr, cache))
            rows.append(run(task, f"flora @ {budget:.3f}", matched(FloraMethod(), budget), args.seeds, args.lr, cache))
        for r in (2, 8):
            rows.append(run(task, f"svfit r={r}", fixed(SvfitMethod(), r), args.seeds, args.svfit_lr or args.lr, cache))
        show("digits-cnn adapt: FLoRA vs conv-LoRA at equal trainable parameters", rows, dense)
    print(f"\nwall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
