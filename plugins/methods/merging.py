"""Merge methods: one model from a base and its fine-tuned members (kind "merge").

task-arithmetic (Ilharco et al. 2023), ties (Yadav et al. 2023), concrete-ta and
concrete-adamerging (Tang et al. 2023, "Concrete Subspace Learning based Interference Elimination
for Multi-task Model Fusion"; official code tanganke/subspace_fusion, benchmark FusionBench),
adamerging (Yang et al. 2024, layer-wise; the ablation of concrete-adamerging without the mask),
and `individual`, the reference row that scores each member by itself.

Each returns theta_0 + a merged task vector, every parameter frozen, and leaves its measurements
on the model as `merge_stats` (a `MergeStats`), which the `merge-cost` metric records. A merge's
size knob is what it keeps of the task vectors (TIES's k, the Concrete mask's density), so
budgets compare merges at equal retained fractions; the methods without one run once per seed.
Where a lambda is chosen it is chosen on the members' validation splits, never on test
(the official scripts sweep it on test). docs/merging.md has the details and the deviations.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl

from . import _merge_learn as learn
from ._merge_ops import (ConcreteMask, Family, MergeStats, build_family, flatten, masked, measured, merged_model,
                         scaled_sum, tensor_bytes, ties_merge, unflatten)

LAM_GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0]
LAM_HELP = "lambda; null: chosen on the members' validation splits from lam_grid"
ADAPT_HELP = "split whose inputs (no labels) the entropy is minimised on: 'val' or 'train' (never test)"


def _params_lambda() -> dict[str, Param]:
    return {"lam": Param(None, float | None, low=0.0, help=LAM_HELP),
            "lam_grid": Param(list(LAM_GRID), list[float], low=0.0, help="lambda candidates when lam is null")}


def _params_entropy(steps: int) -> dict[str, Param]:
    return {"steps": Param(steps, int, low=0, help="Adam steps of entropy minimisation (official: 1000)"),
            "batch_size": Param(16, int, low=1, help="unlabeled inputs per member per step (official: 16)"),
            "adapt_split": Param("val", choices=("val", "train"), help=ADAPT_HELP)}


class MergeMethod(Method):
    """Shared plumbing: build the family, time the merge, attach the stats to the model."""

    kind = "merge"
    targets = ("Module",)
    identity_at_init = False

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        self.check_size(size)
        stats = MergeStats()
        with measured(stats, ctx.device):
            fam = build_family(model, ctx, self.name)
            gen = torch.Generator().manual_seed(ctx.seed)
            delta, held = self.merge(fam, size, ctx, gen, stats)
            out = merged_model(fam, delta)
        stats.state_bytes = tensor_bytes(fam.vectors, held)
        out.merge_stats = stats
        return out

    def check_size(self, size: float | None) -> None:
        if self.knob is None and size is not None:
            raise PluginError(f"method {self.name!r} has no size knob; got size={size!r}")
        if self.knob is not None and (size is None or not 0 < float(size) <= 1):
            raise PluginError(f"method {self.name!r}: {self.knob.name} must be a fraction in (0, 1], got {size!r}")

    def merge(self, fam: Family, size: float | None, ctx: ApplyContext, gen: torch.Generator,
              stats: MergeStats) -> tuple[dict[str, torch.Tensor], list]:
        """(delta = merged - theta_0 per merged tensor, tensors held beyond the task vectors)."""
        raise NotImplementedError

    def lam(self, fam: Family, ctx: ApplyContext, direction: dict, splits: dict, stats: MergeStats) -> float:
        if self.hparams["lam"] is not None:
            stats.lam = float(self.hparams["lam"])
            return stats.lam
        return learn.select_lambda(fam, ctx, splits, direction, self.hparams["lam_grid"], stats)


class TaskArithmetic(MergeMethod):
    name = "task-arithmetic"
    knob = None
    params = _params_lambda()
    description = "Task arithmetic: theta_0 + lambda * sum of task vectors; lambda chosen on validation."

    def merge(self, fam, size, ctx, gen, stats):
        direction = scaled_sum([fam.vectors[m] for m in fam.members], [1.0] * len(fam.members))
        lam = self.lam(fam, ctx, direction, learn.member_splits(ctx, fam), stats)
        return {n: lam * d for n, d in direction.items()}, [direction]


class Ties(MergeMethod):
    name = "ties"
    knob = Knob("k", low=0.01, high=1.0, integer=False, help="fraction of each task vector kept by the trim")
    params = {**_params_lambda(),
              "merge": Param("mean", choices=("mean", "sum"),
                             help="disjoint merge: 'mean' (the TIES paper's code) or 'sum' (subspace_fusion's dis-sum)")}
    description = "TIES-Merging: trim each task vector to its top k, elect signs by mass, disjoint mean; lambda on validation."

    def merge(self, fam, size, ctx, gen, stats):
        rows = flatten([fam.vectors[m] for m in fam.members], fam.names)
        result = ties_merge(rows, float(size), self.hparams["merge"])
        direction = unflatten(result.merged, fam.base, fam.names)
        stats.retained = float(result.agree.float().mean())
        stats.extra["trim_kept"] = float(result.trimmed.float().mean())
        lam = self.lam(fam, ctx, direction, learn.member_splits(ctx, fam), stats)
        return {n: lam * d for n, d in direction.items()}, [rows]


class ConcreteTA(MergeMethod):
    name = "concrete-ta"
    knob = Knob("density", low=0.01, high=1.0, integer=False, help="expected fraction of task-vector entries the shared mask keeps")
    params = {**_params_lambda(), **_params_entropy(1000),
              "lr": Param(1e-3, float, low=0.0, help="Adam learning rate of the mask logits (official 1e-3)"),
              "temperature": Param(0.5, float, low=1e-3, help="relaxed Bernoulli temperature (official 0.5)"),
              "eval_mask": Param("discrete", choices=("discrete", "continuous"),
                                 help="the final mask: a Bernoulli draw or one relaxed sample")}
    description = ("Concrete task arithmetic: a shared Concrete mask over the task vectors, meta-learnt by entropy "
                   "minimisation on unlabeled inputs at its density; lambda chosen on validation.")

    def merge(self, fam, size, ctx, gen, stats):
        h = self.hparams
        splits = learn.member_splits(ctx, fam)
        vectors = [fam.vectors[m] for m in fam.members]
        direction = scaled_sum(vectors, [1.0] * len(vectors))
        lam = self.lam(fam, ctx, direction, splits, stats)  # task arithmetic's lambda; the mask is learnt at it
        mask = ConcreteMask(fam.base, float(size), h["temperature"])
        streams = learn.unlabeled(ctx, splits, h["adapt_split"], h["batch_size"], gen, stats)
        opt = learn.learn_mask_ta(fam, mask, lam, streams, h["steps"], h["lr"], gen)
        final = mask.final(gen, h["eval_mask"])
        stats.mask_density = mask.expected_density()
        stats.retained = _kept(final)
        return {n: lam * direction[n] * final[n] for n in fam.names}, [mask.logits, final, learn.optimizer_state(opt)]


class AdaMerging(MergeMethod):
    """AdaMerging's coefficients start from `init`; by default that is task arithmetic's lambda
    chosen on validation (the official 0.3 is task arithmetic's optimum for 8 CLIP tasks, and a
    start far from a family's optimum is not what the paper tested)."""

    name = "adamerging"
    knob = None
    params = {**_params_entropy(1000),
              "lr": Param(1e-3, float, low=0.0, help="Adam learning rate of the coefficients (official 1e-3)"),
              "init": Param(None, float | None, help="initial coefficient of every member and tensor; null: task "
                            "arithmetic's lambda chosen on validation from lam_grid (the official scripts use 0.3)"),
              "lam_grid": _params_lambda()["lam_grid"],
              "clamp": Param(True, bool, help="clamp coefficients to [0, 1] (subspace_fusion: yes)")}
    description = "Layer-wise AdaMerging: one coefficient per member and tensor, learnt by entropy minimisation on unlabeled inputs."

    def merge(self, fam, size, ctx, gen, stats):
        h = self.hparams
        splits = learn.member_splits(ctx, fam)
        streams = learn.unlabeled(ctx, splits, h["adapt_split"], h["batch_size"], gen, stats)
        vectors = [fam.vectors[m] for m in fam.members]
        lw = learn.LayerWise.init(len(vectors), len(fam.names), self.init(fam, ctx, splits, stats), h["clamp"], fam.device)
        opt = learn.adamerge(fam, vectors, lw, streams, h["steps"], h["lr"])
        with torch.no_grad():
            stats.lam = float(lw.weights().mean())
            return lw.delta(fam, vectors), [lw.coef, learn.optimizer_state(opt)]

    def init(self, fam: Family, ctx: ApplyContext, splits: dict, stats: MergeStats) -> float:
        if self.hparams["init"] is not None:
            return float(self.hparams["init"])
        direction = scaled_sum([fam.vectors[m] for m in fam.members], [1.0] * len(fam.members))
        lam = learn.select_lambda(fam, ctx, splits, direction, self.hparams["lam_grid"], stats)
        stats.extra["init"] = lam
        return lam


class ConcreteAdaMerging(AdaMerging):
    name = "concrete-adamerging"
    knob = ConcreteTA.knob
    params = {**AdaMerging.params,
              "mask_steps": Param(1000, int, low=0, help="meta-learning steps of the mask (stage 1; official 1000)"),
              "mask_lr": Param(1e-3, float, low=0.0, help="Adam learning rate of the mask logits (official 1e-3)"),
              "inner_lr": Param(1.0, float, low=0.0, help="inner Adam step size on the coefficients (official base_lr 1)"),
              "temperature": ConcreteTA.params["temperature"], "eval_mask": ConcreteTA.params["eval_mask"]}
    description = ("Concrete layer-wise AdaMerging: a shared Concrete mask meta-learnt through an inner AdaMerging "
                   "step, then layer-wise coefficients learnt on the masked task vectors (entropy on unlabeled inputs).")

    def merge(self, fam, size, ctx, gen, stats):
        h = self.hparams
        splits = learn.member_splits(ctx, fam)
        streams = learn.unlabeled(ctx, splits, h["adapt_split"], h["batch_size"], gen, stats)
        vectors = [fam.vectors[m] for m in fam.members]
        init = self.init(fam, ctx, splits, stats)
        lw = learn.LayerWise.init(len(vectors), len(fam.names), init, h["clamp"], fam.device)
        mask = ConcreteMask(fam.base, float(size), h["temperature"])
        opts = learn.learn_mask_adamerging(fam, mask, lw, init, streams, h["mask_steps"], h["mask_lr"], h["inner_lr"], gen)
        final = mask.final(gen, h["eval_mask"])
        stats.mask_density = mask.expected_density()
        stats.retained = _kept(final)
        kept = masked(vectors, final)
        opt = learn.adamerge(fam, kept, lw, streams, h["steps"], h["lr"])
        with torch.no_grad():
            stats.lam = float(lw.weights().mean())
            return lw.delta(fam, kept), [mask.logits, final, lw.coef, learn.optimizer_state(*opts, opt)]


class MemberSet(nn.Module):
    """Every member kept as it is: the `individual` reference. It has no single forward; a family
    task's member_view scores member m by `member_models[m]` itself."""

    def __init__(self, members: dict[str, nn.Module]) -> None:
        super().__init__()
        self.member_models = nn.ModuleDict(members)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise PluginError("the 'individual' reference keeps every member and has no single forward: it is scored per "
                          "member through the task's member_view (this task's member_view does not read member_models)")


class Individual(Method):
    name = "individual"
    kind = "merge"
    knob = None
    targets = ("Module",)
    description = "Reference: each member scored by itself (what merging tries to keep); stores every member."

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if size is not None:
            raise PluginError(f"method 'individual' has no size knob; got size={size!r}")
        if not ctx.members:
            raise PluginError("method 'individual' runs only in merge cells, on a task with members")
        stats = MergeStats(retained=1.0)
        with measured(stats, ctx.device):
            out = MemberSet({m: copy.deepcopy(mod) for m, mod in ctx.members.items()})
            for p in out.parameters():
                p.requires_grad_(False)
        out.merge_stats = stats
        return out.eval()


def _kept(mask: dict[str, torch.Tensor]) -> float:
    return sum(float((t != 0).sum()) for t in mask.values()) / sum(t.numel() for t in mask.values())


@hookimpl
def register_methods(register) -> None:
    for cls in (TaskArithmetic, Ties, ConcreteTA, AdaMerging, ConcreteAdaMerging, Individual):
        register(cls)
