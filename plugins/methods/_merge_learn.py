"""The learnt parts of merging: lambda chosen on validation, AdaMerging's coefficients and the
Concrete mask, both fitted by entropy minimisation on unlabeled inputs.

Data discipline (the reason this module exists apart): the official scripts sweep lambda on the
test sets and adapt on the test inputs. Here lambda is chosen on each member's labelled
validation split, entropy is minimised on the inputs (never the labels) of a split the method
names (validation by default), and nothing here ever reads a test split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from lowdim_bench.api import ApplyContext, Inputs, PluginError

from ._merge_ops import ConcreteMask, Family, MergeStats, Vector, loaded, view_forward


def entropy(logits: Any) -> Tensor:
    """Mean Shannon entropy (nats) of the softmax over the last dimension (classes, or the next
    byte of a language model), averaged over every other position; as AdaMerging's softmax_entropy."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not isinstance(logits, Tensor):
        raise PluginError(f"entropy minimisation needs the model to return logits, got {type(logits).__name__}")
    logp = logits.float().log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


def member_splits(ctx: ApplyContext, fam: Family) -> dict[str, dict[str, Any]]:
    return {m: ctx.task.splits(f"member:{m}", ctx.seed) for m in fam.members}


def unlabeled(ctx: ApplyContext, splits: dict[str, dict[str, Any]], part: str, batch_size: int,
              gen: torch.Generator, stats: MergeStats) -> dict[str, Iterator[Inputs]]:
    """Per member, an endless stream of model inputs from its `part` split, labels dropped."""
    if part not in ("train", "val"):
        raise PluginError(f"adapt_split must be 'train' or 'val' (never test), got {part!r}")

    def stream(split: Any) -> Iterator[Inputs]:
        for batch in ctx.task.batches(split, batch_size, gen):
            stats.unlabeled_batches += 1
            yield Inputs.of(ctx.task.to_device(ctx.task.model_inputs(batch), ctx.device))

    return {m: stream(s[part]) for m, s in splits.items()}


def entropy_loss(fam: Family, params_for: Callable[[int], Vector], streams: dict[str, Iterator[Inputs]]) -> Tensor:
    """Summed over members (as the official loop sums per-task losses): the entropy of member i's
    view, run with params_for(i), on its next unlabeled batch."""
    losses = [entropy(view_forward(fam, m, params_for(i), next(streams[m]))) for i, m in enumerate(fam.members)]
    return torch.stack(losses).sum()


def mean_val_quality(fam: Family, ctx: ApplyContext, splits: dict[str, dict[str, Any]], delta: Vector) -> float:
    with loaded(fam, delta):
        return sum(ctx.task.evaluate(fam.views[m], splits[m]["val"]) for m in fam.members) / len(fam.members)


def select_lambda(fam: Family, ctx: ApplyContext, splits: dict[str, dict[str, Any]], direction: Vector,
                  grid: list[float], stats: MergeStats) -> float:
    """The lambda of the grid whose theta_0 + lambda * direction has the best mean validation
    quality over the members (first of equals). Records it, and whether it sits at a grid edge."""
    if not grid:
        raise PluginError("lam_grid is empty")
    sign = 1.0 if ctx.task.quality.higher_is_better else -1.0
    best_lam, best = grid[0], None
    for lam in grid:
        q = mean_val_quality(fam, ctx, splits, {n: lam * d for n, d in direction.items()})
        stats.val_passes += len(fam.members)
        if best is None or sign * q > sign * best:
            best_lam, best = lam, q
    stats.lam = best_lam
    stats.lam_at_grid_edge = len(grid) > 1 and best_lam in (min(grid), max(grid))
    stats.extra["val_quality_selected"] = float(best)
    return best_lam


# ---- AdaMerging: layer-wise coefficients ----------------------------------------------------------
@dataclass
class LayerWise:
    """lambda[i, j] for member i and merged tensor j ("layer" = one parameter tensor, as the
    official LayerWiseMergedModel counts them), clamped to [0, 1] when `clamp` (subspace_fusion)."""

    coef: Tensor
    clamp: bool

    @classmethod
    def init(cls, members: int, tensors: int, value: float, clamp: bool, device: torch.device) -> "LayerWise":
        return cls(torch.full((members, tensors), float(value), device=device, requires_grad=True), clamp)

    def weights(self) -> Tensor:
        return self.coef.clamp(0.0, 1.0) if self.clamp else self.coef

    def delta(self, fam: Family, vectors: list[Vector], weights: Tensor | None = None) -> Vector:
        w = self.weights() if weights is None else weights
        return {n: sum(w[i, j] * v[n] for i, v in enumerate(vectors)) for j, n in enumerate(fam.names)}


def params_of(fam: Family, delta: Vector) -> Vector:
    return {n: fam.base[n] + delta[n] for n in fam.names}


def adamerge(fam: Family, vectors: list[Vector], lw: LayerWise, streams: dict[str, Iterator[Inputs]],
             steps: int, lr: float) -> torch.optim.Optimizer:
    """AdaMerging: Adam (lr 1e-3 in the official scripts) on the coefficients, minimising the
    summed entropy of every member's predictions on its unlabeled batches."""
    opt = torch.optim.Adam([lw.coef], lr=lr, betas=(0.9, 0.999))
    for _ in range(steps):
        params = params_of(fam, lw.delta(fam, vectors))
        loss = entropy_loss(fam, lambda i: params, streams)
        (grad,) = torch.autograd.grad(loss, [lw.coef])
        opt.zero_grad(set_to_none=True)
        lw.coef.grad = grad
        opt.step()
    return opt


# ---- Concrete mask meta-learning ----------------------------------------------------------------
def learn_mask_ta(fam: Family, mask: ConcreteMask, lam: float, streams: dict[str, Iterator[Inputs]],
                  steps: int, lr: float, gen: torch.Generator) -> torch.optim.Optimizer | None:
    """Concrete task arithmetic: lambda fixed, the shared mask's logits trained by Adam on the
    summed entropy through a fresh relaxed sample per step, then projected to the density."""
    if mask.density >= 1:
        return None
    opt = torch.optim.Adam(mask.parameters(), lr=lr, betas=(0.9, 0.999))
    vectors = [fam.vectors[m] for m in fam.members]
    for _ in range(steps):
        m = mask.relaxed(gen)
        delta = {n: lam * sum(v[n] for v in vectors) * m[n] for n in fam.names}
        params = params_of(fam, delta)
        loss = entropy_loss(fam, lambda i: params, streams)
        grads = torch.autograd.grad(loss, mask.parameters())
        opt.zero_grad(set_to_none=True)
        for t, g in zip(mask.parameters(), grads):
            t.grad = g
        opt.step()
        mask.project()
    return opt


def learn_mask_adamerging(fam: Family, mask: ConcreteMask, lw: LayerWise, init: float,
                          streams: dict[str, Iterator[Inputs]], steps: int, lr: float, inner_lr: float,
                          gen: torch.Generator) -> list[torch.optim.Optimizer]:
    """Concrete layer-wise AdaMerging, stage 1 (FusionBench's train_mask, subspace_fusion's
    meta_train): per step, reset the coefficients to `init`, take one inner Adam step on them
    (lr `inner_lr`, 1 in the official code; its Adam state persists across steps) with the mask
    sample held constant, then one outer Adam step on the mask logits through the same sample at
    the updated coefficients (first order: the inner step is not differentiated through)."""
    if mask.density >= 1:
        return []
    inner = torch.optim.Adam([lw.coef], lr=inner_lr, betas=(0.9, 0.999))
    outer = torch.optim.Adam(mask.parameters(), lr=lr, betas=(0.9, 0.999))
    vectors = [fam.vectors[m] for m in fam.members]
    for _ in range(steps):
        m = mask.relaxed(gen)
        with torch.no_grad():
            lw.coef.fill_(init)
        fixed = [{n: v[n] * m[n].detach() for n in fam.names} for v in vectors]
        params = params_of(fam, lw.delta(fam, fixed))
        (g,) = torch.autograd.grad(entropy_loss(fam, lambda i: params, streams), [lw.coef])
        inner.zero_grad(set_to_none=True)
        lw.coef.grad = g
        inner.step()
        weights = lw.weights().detach()
        live = [{n: v[n] * m[n] for n in fam.names} for v in vectors]
        params = params_of(fam, lw.delta(fam, live, weights))
        grads = torch.autograd.grad(entropy_loss(fam, lambda i: params, streams), mask.parameters())
        outer.zero_grad(set_to_none=True)
        for t, gr in zip(mask.parameters(), grads):
            t.grad = gr
        outer.step()
        mask.project()
    with torch.no_grad():
        lw.coef.fill_(init)
    return [inner, outer]


def optimizer_state(*opts: torch.optim.Optimizer | None) -> list[Tensor]:
    """The tensors an optimizer keeps (Adam's moments), for the merge's state bytes."""
    return [v for o in opts if o is not None for st in o.state.values() for v in st.values()
            if isinstance(v, Tensor) and v.dim() > 0]
