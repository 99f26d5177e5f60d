"""Fine-tune a family's members and run each merge method once per seed: per-member quality.

What a merge cell does, without the harness's worker: a base trained on the family's "source"
stage (pretrain recipe), one member per "member:<name>" stage fine-tuned from it (finetune
recipe), both cached in LOWDIM_BENCH_CACHE as the harness caches base models; then every method
merges and is scored on each member's test split through the task's member_view, beside the
members themselves (normalised = merged / individual) and the base with each member's head.

    python scripts/check_merge.py --task digits-mlp-family --seeds 0,1,2
    python scripts/check_merge.py --task digits-cnn-family --methods ties --set ties.k=0.2
    python scripts/check_merge.py --task stdlib-lm-family --opt steps=100 --opt finetune_steps=60

Prints one line per (seed, method) and a mean table; uptime first, since the machine is shared.
"""
from __future__ import annotations

import argparse
import ast
import copy
import os
import statistics
import time

import torch

from lowdim_bench.api import ApplyContext
from lowdim_bench.registry import Registry
from lowdim_bench.run.cache import cached_model
from lowdim_bench.run.train import train

METHODS = {  # name -> (method, size)
    "dense": ("dense", None),
    "task-arithmetic": ("task-arithmetic", None),
    "ties": ("ties", 0.2),
    "concrete-ta": ("concrete-ta", 0.5),
    "adamerging": ("adamerging", None),
    "concrete-adamerging": ("concrete-adamerging", 0.5),
    "individual": ("individual", None),
}


def family(task, seed: int):
    """(base, {member: fine-tuned model}), trained once and cached like the harness's bases."""
    def base_build():
        torch.manual_seed(seed)
        model = task.make_model(seed)
        train(model, task, None, task.splits("source", seed)["train"], task.recipe("pretrain"), seed, torch.device("cpu"))
        return model

    base, _ = cached_model(task, "source", seed, "check_merge", base_build)
    members = {}
    for m in task.members():
        def member_build(m=m):
            model = copy.deepcopy(base)
            train(model, task, None, task.splits(f"member:{m}", seed)["train"], task.recipe("finetune"), seed,
                  torch.device("cpu"))
            return model

        members[m], _ = cached_model(task, f"member:{m}", seed, "check_merge", member_build)
    return base.eval(), {m: v.eval() for m, v in members.items()}


def literal(value: str):
    """A Python literal (1e-3, True, ['a', 'b']), else the string itself."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def parse_sets(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        key, _, value = item.partition("=")
        entry, _, hp = key.partition(".")
        out.setdefault(entry, {})[hp] = literal(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits-mlp-family")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--opt", action="append", default=[], help="task option key=value")
    ap.add_argument("--set", action="append", default=[], help="method.hparam=value, or method.size=value")
    args = ap.parse_args()
    print("uptime:", os.popen("uptime").read().strip())
    reg = Registry.load()
    opts = {k: literal(v) for k, _, v in (o.partition("=") for o in args.opt)}
    task = reg.task(args.task).cls(**opts)
    sets = parse_sets(args.set)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        base, members = family(task, seed)
        tests = {m: task.splits(f"member:{m}", seed)["test"] for m in members}
        alone = {m: task.evaluate(members[m], tests[m]) for m in members}
        print(f"seed {seed}: family ready in {time.perf_counter() - t0:.1f} s; individual "
              + " ".join(f"{m}={q:.3f}" for m, q in alone.items()))
        for entry in args.methods.split(","):
            name, size = METHODS.get(entry, (entry, None))
            hp = dict(sets.get(entry, {}))
            size = hp.pop("size", size)
            method = reg.method(name).cls(**hp)
            ctx = ApplyContext(seed=seed, device=torch.device("cpu"), task=task, kind="merge",
                               generator=torch.Generator().manual_seed(seed), members=members)
            t0 = time.perf_counter()
            merged = method.apply(base, size, ctx)
            secs = time.perf_counter() - t0
            q = {m: task.evaluate(task.member_view(merged, m, members[m]), tests[m]) for m in members}
            mean = statistics.fmean(q.values())
            norm = statistics.fmean(q[m] / alone[m] for m in members)
            st = getattr(merged, "merge_stats", None)
            extra = f" lam={st.lam:.3g}" if st is not None and st.lam is not None else ""
            extra += f" kept={st.retained:.3f} cpu={st.cpu_seconds:.1f} s" if st is not None else ""
            print(f"  {entry:20s} mean={mean:.4f} norm={norm:.3f} {secs:6.1f} s{extra} | "
                  + " ".join(f"{m}={v:.3f}" for m, v in q.items()))
            rows.setdefault(entry, []).append((mean, norm, secs))
    print("\nmethod               mean quality (sd)   normalised   seconds   seeds")
    for entry, vals in rows.items():
        means = [v[0] for v in vals]
        sd = statistics.stdev(means) if len(means) > 1 else 0.0
        print(f"{entry:20s} {statistics.fmean(means):.4f} ({sd:.4f})    {statistics.fmean(v[1] for v in vals):.3f}"
              f"      {statistics.fmean(v[2] for v in vals):6.1f}   {len(vals)}")


if __name__ == "__main__":
    main()
