"""The tensor algorithms of model merging (task vectors, TIES, the Concrete mask) and their bookkeeping.

Kept apart from the Method classes (merging.py) so each algorithm is a plain function of tensors
that a test can pin against the papers' formulas. Notation as in the papers and
tanganke/subspace_fusion: theta_0 the base, tau_i = theta_i - theta_0 the task vectors, lambda a
scaling coefficient, m a mask shared by every task.

Which parameters are merged: those the task's `member_view` actually uses, found by identity.
A digits family swaps each member's own head into the view, so heads are never merged (as CLIP's
per-task text heads are not); the stdlib-lm family scores the merged model as is, so everything
is merged.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lowdim_bench.api import ApplyContext, Inputs, PluginError
from lowdim_bench.measure.call_memory import ProcessPeak

Vector = dict[str, Tensor]  # one tensor per merged parameter name


@dataclass
class Family:
    """The base, its members and how each member is scored, prepared once per merge.

    template: a frozen copy of the base; every view shares its parameters (by identity), so a
    view evaluates whatever values are loaded into the template. view_names maps each view's
    parameter names to the template's names, for `functional_call`."""

    template: nn.Module
    names: list[str]
    base: Vector
    vectors: dict[str, Vector]
    views: dict[str, nn.Module]
    view_names: dict[str, dict[str, str]]

    @property
    def members(self) -> list[str]:
        return list(self.vectors)

    @property
    def device(self) -> torch.device:
        return next(iter(self.base.values())).device


def build_family(base: nn.Module, ctx: ApplyContext, method: str) -> Family:
    if not ctx.members:
        raise PluginError(f"method {method!r} merges a family of fine-tuned models: it runs only in merge cells, "
                          f"on a task whose members() is not empty (got no members)")
    template = _frozen_copy(base)
    by_id = {id(p): n for n, p in template.named_parameters()}
    views, view_names, used = {}, {}, set()
    for name, member in ctx.members.items():
        view = ctx.task.member_view(template, name, member)
        mapping = {vn: by_id[id(p)] for vn, p in view.named_parameters(remove_duplicate=False) if id(p) in by_id}
        views[name], view_names[name] = view, mapping
        used.update(mapping.values())
    names = [n for n, p in template.named_parameters() if n in used and p.is_floating_point()]
    if not names:
        raise PluginError(f"method {method!r}: the task's member_view uses none of the base's parameters; "
                          f"nothing to merge")
    theta0 = {n: p.detach().clone() for n, p in template.named_parameters() if n in used}  # the template changes under `loaded`
    vectors = {}
    for name, member in ctx.members.items():
        mp = dict(member.named_parameters())
        for n in names:
            if n not in mp or mp[n].shape != theta0[n].shape:
                raise PluginError(f"method {method!r}: member {name!r} has no parameter {n!r} of shape "
                                  f"{tuple(theta0[n].shape)}; members must be fine-tuned copies of the base")
        vectors[name] = {n: (mp[n].detach().to(theta0[n].device) - theta0[n]) for n in names}
    moved = [n for n in names if any(bool(v[n].any()) for v in vectors.values())]  # no member changed the rest
    if not moved:
        raise PluginError(f"method {method!r}: no member differs from the base; nothing to merge")
    names = moved
    vectors = {m: {n: v[n] for n in names} for m, v in vectors.items()}
    view_names = {m: {vn: tn for vn, tn in mapping.items() if tn in names} for m, mapping in view_names.items()}
    return Family(template, names, {n: theta0[n] for n in names}, vectors, views, view_names)


def _frozen_copy(model: nn.Module) -> nn.Module:
    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def merged_model(fam: Family, delta: Vector) -> nn.Module:
    """A fresh model theta_0 + delta (every parameter frozen: nothing trains after a merge)."""
    out = _frozen_copy(fam.template)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for n in fam.names:
            params[n].copy_(fam.base[n] + delta[n])
    return out


def view_forward(fam: Family, member: str, params: Vector, inputs: Inputs) -> Any:
    """Member `member`'s view run with the merged parameters `params` (differentiable in them)."""
    bound = {vn: params[tn] for vn, tn in fam.view_names[member].items()}
    return functional_call(fam.views[member], bound, args=inputs.args, kwargs=inputs.kwargs, strict=False)


@contextmanager
def loaded(fam: Family, delta: Vector) -> Iterator[None]:
    """theta_0 + delta loaded into the template (so every view computes it), restored on exit."""
    params = dict(fam.template.named_parameters())
    try:
        with torch.no_grad():
            for n in fam.names:
                params[n].copy_(fam.base[n] + delta[n])
        yield
    finally:
        with torch.no_grad():
            for n in fam.names:
                params[n].copy_(fam.base[n])


# ---- task arithmetic and TIES -----------------------------------------------------------------
def scaled_sum(vectors: list[Vector], weights: list[float] | Tensor) -> Vector:
    names = vectors[0].keys()
    return {n: sum(w * v[n] for w, v in zip(weights, vectors)) for n in names}


def flatten(vectors: list[Vector], names: list[str]) -> Tensor:
    """(tasks, D): each task vector as one row, parameters in `names` order."""
    return torch.stack([torch.cat([v[n].reshape(-1) for n in names]) for v in vectors])


def unflatten(flat: Tensor, like: Vector, names: list[str]) -> Vector:
    out, i = {}, 0
    for n in names:
        k = like[n].numel()
        out[n] = flat[i:i + k].view_as(like[n])
        i += k
    return out


def top_k_mask(rows: Tensor, k: float) -> Tensor:
    """Per row, the int(k D) entries of largest magnitude (over the whole flattened task vector,
    as TIES's code does). The official `topk_values_mask` keeps one more through its kthvalue
    threshold (and fails at k = 1); here exactly int(k D), at least one."""
    d = rows.shape[1]
    keep = min(d, max(1, int(k * d)))
    if keep == d:
        return torch.ones_like(rows, dtype=torch.bool)
    idx = rows.abs().topk(keep, dim=1).indices
    return torch.zeros_like(rows, dtype=torch.bool).scatter_(1, idx, True)


def elect_signs(trimmed: Tensor) -> Tensor:
    """The sign of each parameter's total mass over tasks; a zero total takes the sign of the
    grand total (the official resolve_zero_signs "majority")."""
    sign = torch.sign(trimmed.sum(dim=0))
    majority = torch.sign(sign.sum())
    return torch.where(sign == 0, majority if majority != 0 else torch.ones_like(majority), sign)


@dataclass
class TiesResult:
    merged: Tensor  # (D,) the merged task vector before lambda
    agree: Tensor  # (tasks, D) bool: entries kept by the trim AND of the elected sign
    trimmed: Tensor  # (tasks, D) bool: entries kept by the trim


def ties_merge(rows: Tensor, k: float, merge: str = "mean") -> TiesResult:
    """TIES-Merging: trim each task vector to its top k by magnitude, elect a sign per parameter by
    total mass, then average (or sum) only the entries that agree with it (disjoint merge)."""
    if merge not in ("mean", "sum"):
        raise PluginError(f"ties: merge must be 'mean' or 'sum', got {merge!r}")
    kept = top_k_mask(rows, k)
    trimmed = rows * kept
    sign = elect_signs(trimmed)
    agree = kept & (torch.sign(trimmed) == sign) & (trimmed != 0)
    selected = trimmed * agree
    total = selected.sum(dim=0)
    if merge == "mean":
        total = total / agree.sum(dim=0).clamp(min=1)
    return TiesResult(total, agree, kept)


def sign_conflict(rows: Tensor, k: float = 1.0) -> float:
    """TIES's interference measure: among parameters where 2+ task vectors (trimmed to top k) are
    non-zero, the fraction whose non-zero entries do not all share one sign."""
    trimmed = rows * top_k_mask(rows, k)
    pos, neg = (trimmed > 0).sum(dim=0), (trimmed < 0).sum(dim=0)
    several = (pos + neg) >= 2
    n = int(several.sum())
    return float(((pos > 0) & (neg > 0) & several).sum()) / n if n else 0.0


# ---- the Concrete mask ------------------------------------------------------------------------
def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class ConcreteMask:
    """One mask logit per merged parameter entry, shared by every task (Tang et al.).

    A relaxed Bernoulli sample at temperature T is sigmoid((logits + log u - log(1 - u)) / T) with
    u ~ U(0, 1) from our generator (torch's RelaxedBernoulli draws from the global RNG). The
    expected density is mean(sigmoid(logits)) over all entries: exactly the chance that a sample
    exceeds 1/2, i.e. the density of the binary mask. `project` shifts every logit by one constant
    so that it equals the knob: the official code has no density knob (init logit 0, density 1/2);
    a fixed density lets budgets compare merges at equal retained task-vector mass."""

    def __init__(self, like: Vector, density: float, temperature: float) -> None:
        if not 0 < density <= 1:
            raise PluginError(f"concrete mask density must be in (0, 1], got {density!r}")
        self.density, self.temperature = density, temperature
        init = logit(density) if density < 1 else 0.0
        self.logits = {n: torch.full_like(v, init, requires_grad=True) for n, v in like.items()}

    def parameters(self) -> list[Tensor]:
        return list(self.logits.values())

    def expected_density(self) -> float:
        with torch.no_grad():
            total = sum(float(torch.sigmoid(t).sum()) for t in self.logits.values())
        return total / sum(t.numel() for t in self.logits.values())

    def project(self, iters: int = 60) -> None:
        """Shift the logits by the constant c with mean(sigmoid(logits + c)) = density (bisection)."""
        if self.density >= 1:
            return
        flat = torch.cat([t.detach().reshape(-1) for t in self.logits.values()])
        lo, hi = -40.0 - float(flat.max()), 40.0 - float(flat.min())
        for _ in range(iters):
            mid = (lo + hi) / 2
            if float(torch.sigmoid(flat + mid).mean()) < self.density:
                lo = mid
            else:
                hi = mid
        with torch.no_grad():
            for t in self.logits.values():
                t.add_((lo + hi) / 2)

    def relaxed(self, gen: torch.Generator) -> Vector:
        """A differentiable relaxed-Bernoulli sample, rescaled by its mean per tensor."""
        if self.density >= 1:
            return {n: torch.ones_like(t) for n, t in self.logits.items()}
        out = {}
        for n, t in self.logits.items():
            u = torch.rand(t.shape, generator=gen, dtype=t.dtype).clamp_(1e-6, 1 - 1e-6).to(t.device)
            m = torch.sigmoid((t + torch.log(u) - torch.log1p(-u)) / self.temperature)
            out[n] = m / m.mean()
        return out

    def final(self, gen: torch.Generator, kind: str) -> Vector:
        """The mask the merged model keeps: "discrete" (a Bernoulli draw; its density is the knob
        in expectation) or "continuous" (one relaxed sample, FusionBench's eval_mask_type default);
        rescaled by its mean per tensor as in training. Never differentiable."""
        with torch.no_grad():
            if kind == "continuous":
                return self.relaxed(gen)
            if kind != "discrete":
                raise PluginError(f"eval_mask must be 'discrete' or 'continuous', got {kind!r}")
            out = {}
            for n, t in self.logits.items():
                p = torch.sigmoid(t).cpu()
                m = torch.bernoulli(p, generator=gen).to(t.device) if self.density < 1 else torch.ones_like(t)
                out[n] = m / m.mean().clamp(min=1.0 / m.numel())  # an all-zero tensor stays zero
            return out


def masked(vectors: list[Vector], mask: Vector) -> list[Vector]:
    return [{n: v[n] * mask[n] for n in v} for v in vectors]


# ---- what merging itself costs ----------------------------------------------------------------
@dataclass
class MergeStats:
    """Measured while a merge method ran (read by the `merge-cost` metric from `model.merge_stats`).

    peak_bytes: on CUDA the allocator's peak over the merge; on Linux CPUs the rise of the process's
    resident high-water mark (VmHWM, reset before the merge), so it includes allocator slack and is
    noisy at small sizes. state_bytes: what the algorithm held on purpose (task vectors, masks,
    coefficients, optimizer state), computed from the tensors. val_passes: evaluations of the
    members' labelled validation splits (lambda selection); unlabeled_batches: batches of inputs
    without labels (entropy minimisation)."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_bytes: int | None = None
    peak_source: str = ""
    state_bytes: int = 0
    lam: float | None = None
    lam_at_grid_edge: bool = False
    retained: float = 1.0
    mask_density: float | None = None
    val_passes: int = 0
    unlabeled_batches: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def tensor_bytes(*groups: Any) -> int:
    """Bytes of every distinct tensor in nested dicts, lists and tuples."""
    seen: dict[int, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, Tensor):
            seen[id(x)] = x.numel() * x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(groups)
    return sum(seen.values())


@contextmanager
def measured(stats: MergeStats, device: torch.device) -> Iterator[MergeStats]:
    """Fill stats.seconds, cpu_seconds and peak_bytes over the block."""
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_alloc = torch.cuda.memory_allocated(device)
    process = ProcessPeak()  # the peak resident set's rise over the block (Linux); CUDA: the allocator's
    with nullcontext() if cuda else process:
        t0, c0 = time.perf_counter(), time.process_time()
        yield stats
    if cuda:
        torch.cuda.synchronize(device)
        stats.peak_bytes, stats.peak_source = torch.cuda.max_memory_allocated(device) - start_alloc, "cuda_allocated"
    else:
        stats.peak_bytes, stats.peak_source = (process.bytes, "process_hwm_rise") if process.bytes is not None \
            else (None, "")
    stats.seconds, stats.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
