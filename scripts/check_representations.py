"""What the representations suite measures, in one process, until the harness runs it end to end.

1. adapt (source -> target): dense vs lora vs svfit vs flora at one trainable budget. Per cell:
   test accuracy, the coding-rate and weight-spectra metrics with the base model, then the
   `representations` analysis over every trained model of the task (in-memory artefacts).
2. head: gcr (k = 8) vs softmax-head (k = 1, the paper's baseline; k = 8, equal parameters):
   accuracy, the transfer probe on the source stage, and GCR's orthonormality after training,
   with paired differences over seeds (lowdim_bench.stats.paired).

Every model is trained by the harness's loop with the task's finetune recipe, once per rate of a
grid, picked on validation (svfit gets its own grid, as in the suite). Figures are measured.

    python scripts/check_representations.py --tasks digits-mlp --seeds 0 1 2 --threads 1 [--part adapt|head]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import polars as pl
import torch
from torch import nn

from lowdim_bench.api import AnalysisContext, ApplyContext, ArtefactInfo, MeasureContext, Method, SuiteView, Task
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run.budget import apply_sized
from lowdim_bench.run.train import make_optimizer, train
from lowdim_bench.stats import paired
from lowdim_bench_builtin.analyses.representations import RepresentationsAnalysis
from lowdim_bench_builtin.methods._grassmann import orthonormality_error
from lowdim_bench_builtin.metrics.representation import CodingRateMetric, TransferProbeMetric, WeightSpectraMetric

CPU = torch.device("cpu")


class MemoryArtefacts:
    """The Artefacts protocol over models held in memory."""

    def __init__(self, task: Task) -> None:
        self._task, self.cells = task, {}

    def add(self, info: ArtefactInfo, model: nn.Module) -> None:
        self.cells[info.cell_key] = (info, model)

    def list(self, what: str = "model"):
        return [i for i, _ in self.cells.values()]

    def load_model(self, key: str) -> nn.Module:
        return copy.deepcopy(self.cells[key][1])

    def task(self, key: str) -> Task:
        return self._task

    def splits(self, key: str):
        return self._task.splits("target", self.cells[key][0].seed)


def base_model(task: Task, seed: int, cache: dict) -> nn.Module:
    if (task.name, seed) not in cache:
        torch.manual_seed(seed)
        model = task.make_model(seed)
        train(model, task, None, task.splits("source", seed)["train"], task.recipe("pretrain"), seed, CPU)
        cache[(task.name, seed)] = model.eval()
    return cache[(task.name, seed)]


def finetune(task: Task, method: Method, model: nn.Module, seed: int,
             grid: list[float]) -> tuple[nn.Module, float, float]:
    """(best-on-validation model, its test quality, its lr)."""
    splits = task.splits("target", seed)
    best = None
    for lr in grid:
        candidate = copy.deepcopy(model)
        torch.manual_seed(seed)
        train(candidate, task, method, splits["train"], task.recipe("finetune").replace(lr=lr), seed, CPU)
        val = task.evaluate(candidate, splits["val"])
        if best is None or val > best[0]:
            best = (val, candidate, lr)
    return best[1], task.evaluate(best[1], splits["test"]), best[2]


def measure(metric, task: Task, method: Method, model: nn.Module, base: nn.Module, seed: int) -> dict[str, float]:
    ctx = MeasureContext(task=task, method=method, model=model, inference_model=model, kind="adapt", device=CPU,
                         protocol={}, make_optimizer=lambda m: make_optimizer(m, method, 1e-3, 0.0),
                         dense_params=count_params(base).total, base_model=base, splits=task.splits("target", seed))
    return {m.metric + (f"[{m.phase}]" if m.phase else ""): m.value for m in metric.measure(ctx)}


def mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def adapt_part(task: Task, reg: Registry, args, cache: dict) -> None:
    entries = ["dense", "lora", "svfit", "flora"]
    artefacts = MemoryArtefacts(task)
    rows = []
    for name in entries:
        cls = reg.method(name).cls
        grid = args.svfit_lr if name == "svfit" else args.lr
        for seed in args.seeds:
            base = base_model(task, seed, cache)
            method = cls()
            ctx = ApplyContext(seed=seed, device=CPU, task=task, generator=torch.Generator().manual_seed(seed))
            sized = apply_sized(method, base, "adapt", None if cls.knob is None else args.budget, None,
                                count_params(base).total, ctx)
            model, test, lr = finetune(task, method, sized.model, seed, grid)
            rec = {"entry": name, "seed": seed, "knob": sized.knob, "trainable": count_params(model).trainable,
                   "fraction": sized.fraction, "test": test, "lr": lr}
            rec.update(measure(CodingRateMetric(), task, method, model, base, seed))
            rec.update(measure(WeightSpectraMetric(), task, method, model, base, seed))
            rows.append(rec)
            size = "full" if sized.knob is None else f"{args.budget:g}"
            artefacts.add(ArtefactInfo(cell_key=f"{name}-{seed}", task=task.name, method=name, kind="adapt", size=size,
                                       seed=seed, what="model", path=Path("-"), bytes=0), model)
            print(f"  {task.name} {name} seed {seed}: test {test:.3f} (lr {lr:g}, knob {sized.knob}) "
                  f"[{time.perf_counter() - START:.0f} s]", flush=True)
    df = pl.DataFrame(rows)
    cols = ["feature_cka_to_base", "feature_dcka_to_base", "coding_rate_dR", "coding_rate_dR[base]", "update_rel_norm",
            "update_top8_share", "layers_updated"]
    print(f"\n{task.name} adapt at budget {args.budget:g} (means over seeds {args.seeds}; eps^2 = 0.5, "
          f"d = {rows[0]['coding_rate_d']:.0f}, m = {rows[0]['coding_rate_m']:.0f})")
    print(f"{'entry':8} {'knob':>5} {'trainable':>9} {'test acc':>15} " + " ".join(f"{c:>22}" for c in cols))
    for name in entries:
        sub = df.filter(pl.col("entry") == name)
        vals = " ".join(f"{mean_sd([v for v in sub[c].to_list() if v is not None]) if c in sub.columns else '-':>22}"
                        for c in cols)
        print(f"{name:8} {str(sub['knob'][0]):>5} {sub['trainable'][0]:>9} {mean_sd(sub['test'].to_list()):>15} {vals}")
    erank_cols = sorted(c for c in df.columns if c.startswith("update_erank."))
    rand_cols = sorted(c for c in df.columns if c.startswith("update_top8_random."))
    for c in erank_cols:
        print(f"update effective rank {c.split('.', 1)[1]}: " + ", ".join(
            f"{e} {df.filter(pl.col('entry') == e)[c].mean():.2f}" for e in entries
            if df.filter(pl.col("entry") == e)[c].drop_nulls().len()))
    print("random update's top-8 share per layer: " + ", ".join(f"{c.split('.', 1)[1]} {df[c].drop_nulls()[0]:.4f}"
                                                                for c in rand_cols))
    suite = SuiteView(tasks=(task.name,), entries={e: e for e in entries}, reference="dense")
    analysis = RepresentationsAnalysis()
    opts = analysis.validate({"probe": args.probe}, suite)
    t0 = time.perf_counter()
    res = analysis.run(AnalysisContext(run_dir=Path("."), records=pl.DataFrame(), summary=pl.DataFrame(), options=opts,
                                       suite=suite, artefacts=artefacts))
    print(f"\nrepresentations analysis: {len(res.table)} pair rows, {len(res.records)} records, "
          f"{time.perf_counter() - t0:.1f} s")
    print(res.markdown)
    if args.out:
        res.table.write_csv(Path(args.out) / f"representations-{task.name}.csv")
        df.write_csv(Path(args.out) / f"cells-{task.name}.csv")
    means = res.table.group_by(["point"]).agg([pl.col(c).mean() for c in ("debiased_cka", "svcca", "match_corr")])
    print("all pairs, mean per point:\n" + str(means.sort("point")))


def head_part(task: Task, reg: Registry, args, cache: dict) -> None:
    entries = [("gcr", 8), ("softmax-head", 1), ("softmax-head", 8)]
    results: dict[str, dict[str, dict[int, float]]] = {}
    for name, k in entries:
        label = f"{name}@{k}"
        res = results.setdefault(label, {"test": {}, "probe": {}, "ortho": {}})
        for seed in args.seeds:
            base = base_model(task, seed, cache)
            method = reg.method(name).cls()
            model = method.apply(base, k, ApplyContext(seed=seed, device=CPU, task=task))
            model, test, lr = finetune(task, method, model, seed, args.lr)
            res["test"][seed] = test
            res["probe"][seed] = measure(TransferProbeMetric(), task, method, model, base, seed)[
                "transfer_probe_accuracy[source]"]
            if name == "gcr":
                res["ortho"][seed] = orthonormality_error(model.get_submodule("head").bases)
            print(f"  {task.name} {label} seed {seed}: test {test:.3f} probe {res['probe'][seed]:.3f} (lr {lr:g}) "
                  f"[{time.perf_counter() - START:.0f} s]", flush=True)
    base_probe = [measure(TransferProbeMetric(), task, reg.method("dense").cls(), base_model(task, s, cache),
                          base_model(task, s, cache), s)["transfer_probe_accuracy[source]"] for s in args.seeds]
    print(f"\n{task.name} head (source-pretrained base's own probe on source: {mean_sd(base_probe)})")
    print(f"{'entry':16} {'test acc':>15} {'probe acc (source)':>19} {'max |W^T W - I|':>16}")
    for label, res in results.items():
        ortho = f"{max(res['ortho'].values()):.1e}" if res["ortho"] else "-"
        test, probe = mean_sd(list(res["test"].values())), mean_sd(list(res["probe"].values()))
        print(f"{label:16} {test:>15} {probe:>19} {ortho:>16}")
    for ref in ("softmax-head@1", "softmax-head@8"):
        for what in ("test", "probe"):
            p = paired(results[ref][what], results["gcr@8"][what])
            print(f"gcr@8 - {ref} {what}: {p.diff.mean:+.4f} [{p.diff.low:+.4f}, {p.diff.high:+.4f}] "
                  f"p = {p.p_value:.3f}")


START = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["digits-mlp"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=float, default=0.12)
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--svfit-lr", type=float, nargs="+", default=[1e-2, 3e-2, 1e-1])
    ap.add_argument("--probe", type=int, default=256)
    ap.add_argument("--part", choices=["adapt", "head", "both"], default="both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="folder for the pair table and per-cell figures (CSV)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, seeds {args.seeds}, lr grid {args.lr}")
    reg = Registry.load()
    cache: dict = {}
    for name in args.tasks:
        task = reg.task(name).cls()
        if args.part in ("adapt", "both"):
            adapt_part(task, reg, args, cache)
        if args.part in ("head", "both"):
            head_part(task, reg, args, cache)
    print(f"\ntotal {time.perf_counter() - START:.0f} s")


if __name__ == "__main__":
    main()
