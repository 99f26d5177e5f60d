"""Metrics of merge cells: what merging cost, how much of each member it kept, and interference.

merge-cost reads the `merge_stats` a merge method leaves on its model (time and memory of the
merge itself, the lambda it chose, the fraction of task-vector entries it kept); the method
measured them while it ran, because nothing outside `apply` sees the merge happen. A model
without stats (the `dense` base row) gets no records.

merge-quality scores the merged model on each member's test split through the task's
`member_view`, beside the member itself: normalised quality = merged / individual (FusionBench's
"normalized accuracy"; for a lower-is-better quality such as bits per byte it is above 1 when the
merge is worse). It also records TIES's interference measure, the fraction of parameters whose
task vectors disagree in sign, on the full task vectors and after TIES's default 20% trim. The
Concrete paper argues from interference but defines no number of its own for it.
"""
from __future__ import annotations

from types import SimpleNamespace
from lowdim_bench.api import Measurement, MeasureContext, Metric
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench_builtin.methods._merge_ops import build_family, flatten, sign_conflict

TIES_DEFAULT_K = 0.2


class MergeCost(Metric):
    name = "merge-cost"
    description = "Merge cells: wall and CPU time and peak memory of the merge itself, lambda chosen, fraction kept."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        s = getattr(ctx.model, "merge_stats", None) or getattr(ctx.inference_model, "merge_stats", None)
        if s is None:  # the unmerged base keeps none of the task vectors; not a merge cell: nothing to say
            return [Measurement("merge_retained", 0.0, "fraction")] if ctx.kind == "merge" and ctx.members else []
        out = [Measurement("merge_seconds", s.seconds, "s", phase="merge", higher_is_better=False),
               Measurement("merge_cpu_seconds", s.cpu_seconds, "s", phase="merge", higher_is_better=False),
               Measurement("merge_state_bytes", s.state_bytes, "B", phase="merge", higher_is_better=False),
               Measurement("merge_retained", s.retained, "fraction"),
               Measurement("merge_val_passes", s.val_passes, "passes"),
               Measurement("merge_unlabeled_batches", s.unlabeled_batches, "batches")]
        if s.peak_bytes is not None:
            out.append(Measurement(f"merge_peak_bytes_{s.peak_source}", s.peak_bytes, "B", phase="merge",
                                   higher_is_better=False))
        if s.lam is not None:
            out += [Measurement("merge_lambda", s.lam, "lambda"),
                    Measurement("merge_lambda_at_grid_edge", float(s.lam_at_grid_edge), "flag")]
        if s.mask_density is not None:
            out.append(Measurement("merge_mask_density", s.mask_density, "fraction"))
        out += [Measurement(f"merge_{k}", v, "value") for k, v in sorted(s.extra.items())]
        return out


def cell_seed(ctx: MeasureContext) -> int:
    """The cell's seed (member splits may depend on it): extras["seed"], else the cell config's."""
    seed = ctx.extras.get("seed")
    if seed is None:
        seed = ctx.extras.get("config", {}).get("cell", {}).get("seed", 0)
    return int(seed)


class MergeQuality(Metric):
    name = "merge-quality"
    description = "Merge cells: quality per member normalised by the member itself (merged / individual), and sign conflicts."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        if not ctx.members:
            return []
        task, seed, hib = ctx.task, cell_seed(ctx), ctx.task.quality.higher_is_better
        out, ratios = [], []
        for m, member in ctx.members.items():
            test = task.splits(f"member:{m}", seed)["test"]
            merged = task.evaluate(task.member_view(ctx.model, m, member), test)
            alone = task.evaluate(member, test)
            if alone == 0:  # a member that scores 0 by itself has no normalised figure
                continue
            ratios.append(merged / alone)
            out.append(Measurement("quality_normalised", merged / alone, "ratio", phase=m, higher_is_better=hib))
        if ratios:
            out.append(Measurement("quality_normalised", sum(ratios) / len(ratios), "ratio", higher_is_better=hib))
        if ctx.base_model is not None:
            fam = build_family(ctx.base_model, SimpleNamespace(members=ctx.members, task=task), "merge-quality")
            rows = flatten([fam.vectors[m] for m in fam.members], fam.names)
            out += [Measurement("sign_conflict", sign_conflict(rows), "fraction", higher_is_better=False),
                    Measurement("sign_conflict_top20", sign_conflict(rows, TIES_DEFAULT_K), "fraction",
                                higher_is_better=False)]
        return out


@hookimpl
def register_metrics(register) -> None:
    register(MergeCost)
    register(MergeQuality)
