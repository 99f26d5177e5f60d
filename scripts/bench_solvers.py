"""Issue 16's paper checks in one run: AltMin vs AltMin-fast, l_1 row sampling, QuickSelection.

1. Matrix completion (Gu, Song, Yin, Zhang 2023): exact AltMin vs the sketch-preconditioned
   AltMin-fast, side by side on the same instances: median seconds per round at 4 sizes of
   |Omega| (fixed k) and at 4 ranks k (fixed |Omega|), the fitted exponents of time ~ |Omega|^a
   and time ~ k^b (the paper: exact |Omega| k^2, fast |Omega| k), the final relative errors.
2. l_1 regression sampling (Woodruff, Yasuda 2023): relative error and distortion vs expected
   samples for uniform, leverage, root-leverage, Lewis and l_1-sensitivity sampling, over
   instances x draws: medians with 95% bootstrap intervals (l_1 solutions are LP vertices, so
   many samples reproduce OPT exactly: a point mass at zero error), and the verdicts
   root-leverage / Lewis vs uniform / leverage (Mann-Whitney U; "inconclusive" at p >= 0.05).
3. Feature selection (Atashgahi et al. 2022): QuickSelection vs dense-AE, variance and Laplacian
   score on digits and the Madelon generator: accuracy (ExtraTrees on the top k), recall of the
   relevant features, solve seconds, model + optimizer bytes and the peak memory of the solve
   (live torch tensors plus numpy/Python allocations).

    nice -n 5 python scripts/bench_solvers.py            # all three, about 3-5 minutes on 2 cores
    python scripts/bench_solvers.py --parts mc --threads 2
Times are medians on this machine with the thread count printed; run `uptime` beside it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
import weakref

import numpy as np
import torch
from scipy import stats
from threadpoolctl import threadpool_limits
from torch.utils._python_dispatch import TorchDispatchMode

from lowdim_bench.measure.memory import tensor_storages

from lowdim_bench_builtin.solvers import TraceLog
from lowdim_bench_builtin.solvers.altmin import AltMin, AltMinFast
from lowdim_bench_builtin.solvers.completion import MatrixCompletion
from lowdim_bench_builtin.solvers.lp_sampling import Leverage, Lewis, LpSensitivity, RootLeverage, Uniform
from lowdim_bench_builtin.solvers.quickselection import DenseAutoencoder, QuickSelection
from lowdim_bench_builtin.solvers.regression import LpRegression
from lowdim_bench_builtin.solvers.selection import FeatureSelection
from lowdim_bench_builtin.solvers.selection_baselines import LaplacianScore, VarianceSelector


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


# ---- 1. matrix completion ----------------------------------------------------------------------
def time_rounds(solver, inst, k: int, prob) -> tuple[float, float]:
    """(median seconds per round after the first, final relative error)."""
    log = TraceLog(prob, inst)
    solver.solve(inst.data, k, torch.Generator().manual_seed(0), log)
    rounds = [r["round_seconds"] for r in log.rows[2:]]  # row 0 is the init, row 1 the first round
    return statistics.median(rounds), log.rows[-1]["rel_error"]


def completion(args) -> None:
    n, rounds = args.mc_n, args.mc_rounds
    print(f"\n== 1. matrix completion: m = n = {n}, {rounds} rounds, median s/round over rounds 2..{rounds}; "
          "same instance, same init")
    rows, omegas, t_exact, t_fast = [], [], [], []
    k = args.mc_k
    for p in (0.05, 0.1, 0.2, 0.4):
        prob = MatrixCompletion(m=n, n=n, rank=k, p=p)
        inst = prob.instance("test", 0)
        (te, ee), (tf, ef) = time_rounds(AltMin(rounds=rounds), inst, k, prob), \
            time_rounds(AltMinFast(rounds=rounds), inst, k, prob)
        fl_e, fl_f = AltMin().flops(inst.data, k)["round"], AltMinFast().flops(inst.data, k)["round"]
        omegas.append(inst.data.count), t_exact.append(te), t_fast.append(tf)
        rows.append([f"{p:.2f}", f"{inst.data.count:,}", k, f"{te:.3f}", f"{tf:.3f}", f"{te / tf:.2f}",
                     f"{fl_e / 1e9:.2f}", f"{fl_f / 1e9:.2f}", f"{ee:.1e}", f"{ef:.1e}"])
    head = ["exact s/round", "fast s/round", "exact/fast", "exact GFLOP/rd", "fast GFLOP/rd", "exact err", "fast err"]
    print(table(["p", "|Omega|", "k", *head], rows))
    print(f"fitted time ~ |Omega|^a at k = {k}: exact a = {slope(omegas, t_exact):.2f}, "
          f"fast a = {slope(omegas, t_fast):.2f} (paper: both 1; the claim is the factor k between them)")
    rows, ks, t_exact, t_fast = [], [], [], []
    for k in (4, 8, 16, 32):
        prob = MatrixCompletion(m=n, n=n, rank=k, p=args.mc_kp)
        inst = prob.instance("test", 1)
        short = max(3, rounds // 2)
        (te, ee), (tf, ef) = time_rounds(AltMin(rounds=short), inst, k, prob), \
            time_rounds(AltMinFast(rounds=short), inst, k, prob)
        fl_e, fl_f = AltMin().flops(inst.data, k)["round"], AltMinFast().flops(inst.data, k)["round"]
        ks.append(k), t_exact.append(te), t_fast.append(tf)
        rows.append([f"{args.mc_kp:.2f}", f"{inst.data.count:,}", k, f"{te:.3f}", f"{tf:.3f}", f"{te / tf:.2f}",
                     f"{fl_e / 1e9:.2f}", f"{fl_f / 1e9:.2f}", f"{ee:.1e}", f"{ef:.1e}"])
    print(table(["p", "|Omega|", "k", *head], rows))
    print(f"fitted time ~ k^b at |Omega| fixed: exact b = {slope(ks, t_exact):.2f}, fast b = {slope(ks, t_fast):.2f} "
          "(paper: 2 and 1 in the |Omega| term; both pay O(n k^3) per row on top)")


# ---- 2. l_1 regression sampling ------------------------------------------------------------------
FLOOR = 1e-10  # the LP's own tolerance: an error below this is "hit OPT exactly" (a vertex solution)


def median_ci(values: list[float], rng: np.random.Generator) -> tuple[float, float, float]:
    """Median and a 95% bootstrap interval of the median (errors hit OPT exactly, so logs and
    means are no use: the distribution has a point mass at zero)."""
    v = np.maximum(values, FLOOR)
    boots = np.median(rng.choice(v, size=(2000, len(v))), axis=1)
    return float(np.median(v)), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def verdict(a: list[float], b: list[float]) -> str:
    """Is a's error smaller than b's? Mann-Whitney U (two-sided) and the ratio of medians."""
    a, b = np.maximum(a, FLOOR), np.maximum(b, FLOOR)
    p = stats.mannwhitneyu(a, b, alternative="two-sided").pvalue
    ratio = np.median(b) / np.median(a)
    word = "inconclusive" if p >= 0.05 else "better" if np.median(a) < np.median(b) else "worse"
    return f"median ratio {ratio:.3g}x, Mann-Whitney p = {p:.2g}: {word}"


def fmt(x: float) -> str:
    return f"<={FLOOR:.0e}" if x <= FLOOR else f"{x:.1e}"


def sampling(args) -> None:
    rows_n, d = args.lp_rows, 8
    sizes = [50, 100, 200, 400]
    methods = [Uniform(), Leverage(), RootLeverage(), Lewis(), LpSensitivity()]
    prob = LpRegression(rows=rows_n, d=d, p=1, directions=128)
    print(f"\n== 2. l_1 regression sampling: {rows_n} x {d} multivariate-t(df 1) design, t(2) noise; "
          f"{args.lp_instances} instances x {args.lp_draws} draws per cell")
    errs = {(m.name, s): [] for m in methods for s in sizes}
    dist = {(m.name, s): [] for m in methods for s in sizes}
    score_s = {m.name: [] for m in methods}
    for i in range(args.lp_instances):
        inst = prob.instance("test", i)
        for m in methods:
            for s in sizes:
                for draw in range(args.lp_draws):
                    sol = m.solve(inst.data, s, torch.Generator().manual_seed(1000 * i + draw))
                    sc = prob.score(inst, sol)
                    errs[(m.name, s)].append(sc["rel_error"].value)
                    dist[(m.name, s)].append(sc["distortion"].value)
            score_s[m.name].append(next(x.value for x in sol.extras if x.metric == "score_seconds"))
    rows, rng = [], np.random.default_rng(0)
    for m in methods:
        for s in sizes:
            med, lo, hi = median_ci(errs[(m.name, s)], rng)
            hit = np.mean(np.array(errs[(m.name, s)]) <= FLOOR)
            rows.append([m.name, s, fmt(med), f"[{fmt(lo)}, {fmt(hi)}]", f"{hit:.0%}",
                         f"{np.median(dist[(m.name, s)]):.3f}", f"{statistics.median(score_s[m.name]):.3f}"])
    print(table(["sampler", "samples", "rel err (median)", "95% CI (bootstrap)", "hit OPT", "distortion (median)",
                 "score s"], rows))
    print("verdicts (ratio = how many times smaller the first's error is):")
    for good in ("root-leverage", "lewis"):
        for base in ("uniform", "leverage"):
            for s in (100, 400):
                print(f"  {good:>13} vs {base:<8} at {s:>3} samples: {verdict(errs[(good, s)], errs[(base, s)])}")


# ---- 3. feature selection -----------------------------------------------------------------------
class _PeakTensors(TorchDispatchMode):
    """Peak bytes of live torch tensors made inside the block: each storage counted once (sparse
    results: their index and value arrays), dropped when it dies (weak reference), as
    lowdim_bench.measure.memory does for training steps."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.now = self.peak = 0

    def _freed(self, key: int):
        def callback(ref: weakref.ref) -> None:
            hit = self.live.get(key)
            if hit is not None and hit[0] is ref:
                self.now -= self.live.pop(key)[1]
        return callback

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if not isinstance(t, torch.Tensor):
                continue
            for st in tensor_storages(t):
                hit = self.live.get(id(st))
                if (hit is not None and hit[0]() is st) or st.nbytes() == 0:
                    continue
                self.live[id(st)] = (weakref.ref(st, self._freed(id(st))), st.nbytes())
                self.now += st.nbytes()
                self.peak = max(self.peak, self.now)
        return out


def peak_memory(fn):
    """(result, peak bytes): torch tensors made during fn (the tracker above) plus numpy and
    Python allocations (tracemalloc, which numpy reports to); the two peaks are added, an
    upper bound on the true joint peak. Memory the inputs already held is not counted."""
    with _PeakTensors():  # the first use of a dispatch mode imports modules: keep that out
        torch.zeros(2).add_(1)
    tracemalloc.start()
    with _PeakTensors() as tensors:
        out = fn()
    _, np_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, tensors.peak + np_peak


def selection(args) -> None:
    print(f"\n== 3. feature selection: {args.fs_seeds} seeds; autoencoders {args.fs_epochs} epochs "
          "(reference: 100), 1000 hidden, the reference recipe")
    cases = [("digits", dict(dataset="digits"), 16), ("madelon", dict(dataset="madelon", samples=args.fs_samples), 20)]
    for label, opts, k in cases:
        prob = FeatureSelection(**opts)
        rows = []
        for solver in (QuickSelection(epochs=args.fs_epochs), DenseAutoencoder(epochs=args.fs_epochs),
                       VarianceSelector(), LaplacianScore()):
            acc, rec, secs, model = [], [], [], []
            for seed in range(args.fs_seeds):
                inst = prob.instance("test", seed)
                start = time.perf_counter()
                sol = solver.solve(inst.data, k, torch.Generator().manual_seed(seed))
                secs.append(time.perf_counter() - start)
                sc = prob.score(inst, sol)
                acc.append(sc["accuracy"].value)
                rec.append(sc["relevant_recall"].value if "relevant_recall" in sc else float("nan"))
                ex = {m.metric: m.value for m in sol.extras}
                model.append(ex.get("model_bytes", 0) + ex.get("optimizer_bytes", 0))
            inst = prob.instance("test", 0)  # memory: one more solve, tracked (the tracking slows it)
            _, peak = peak_memory(lambda: solver.solve(inst.data, k, torch.Generator().manual_seed(0)))
            recall = "-" if np.all(np.isnan(rec)) else f"{np.nanmean(rec):.2f}"
            rows.append([solver.name, f"{np.mean(acc):.3f} +- {np.std(acc):.3f}", recall,
                         f"{statistics.median(secs):.2f}", f"{statistics.median(model) / 2**20:.2f}",
                         f"{peak / 2**20:.1f}"])
        x = prob.instance("test", 0).data.shape
        print(f"-- {label}: {x[0]} training samples x {x[1]} features, top k = {k}")
        print(table(["selector", "accuracy (mean +- sd)", "relevant recall", "solve s (median)",
                     "model+optimizer MiB", "peak memory MiB"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="mc,lp,fs", help="which parts: mc, lp, fs")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1: steadier on a loaded machine)")
    ap.add_argument("--mc-n", type=int, default=1000)
    ap.add_argument("--mc-k", type=int, default=16)
    ap.add_argument("--mc-kp", type=float, default=0.5, help="sampling rate of the rank sweep")
    ap.add_argument("--mc-rounds", type=int, default=6)
    ap.add_argument("--lp-rows", type=int, default=2048)
    ap.add_argument("--lp-instances", type=int, default=3)
    ap.add_argument("--lp-draws", type=int, default=5)
    ap.add_argument("--fs-seeds", type=int, default=2)
    ap.add_argument("--fs-epochs", type=int, default=30)
    ap.add_argument("--fs-samples", type=int, default=1300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cpus, load {os.getloadavg()}")
    start = time.perf_counter()
    with threadpool_limits(args.threads):
        parts = args.parts.split(",")
        if "mc" in parts:
            completion(args)
        if "lp" in parts:
            sampling(args)
        if "fs" in parts:
            selection(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
