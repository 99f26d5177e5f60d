"""The authoring kit for methods that rewrite layers: find them, swap them in a copy, merge deltas.

Public (docs/plugins.md): built-in and third-party methods use the same pieces, so a method is its
policy (which layers, what replaces them) and nothing else. Each method keeps its own policy; the
mechanics here are shared, so a fix to one (say, how a name suffix matches) reaches all of them.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .hparams import Param, PluginError

Named = list[tuple[str, nn.Module]]


def matches(name: str, suffix: str) -> bool:
    """True when `suffix` is the whole dotted name or its last parts, so "fc" never matches "xfc"."""
    return name == suffix or name.endswith("." + suffix)


def check_suffixes(value: Any, word: str, *, method: str, hparam: str, allow_empty: bool = False) -> None:
    """Reject a hyper-parameter that is neither `word` nor a list of name suffixes, at construction,
    so a typo fails before any model is built."""
    ok = isinstance(value, (list, tuple)) and (allow_empty or bool(value)) and all(isinstance(s, str) for s in value)
    if value != word and not ok:
        raise PluginError(f"{method}: {hparam} must be {word!r} or a list of module-name suffixes, got {value!r}")


def owned_children(model: nn.Module, owners: tuple[type, ...]) -> set[int]:
    """ids of the direct children of every module of an `owners` type: parents such as
    nn.MultiheadAttention read their children's weights directly, so swapping those breaks them."""
    out: set[int] = set()
    for m in model.modules():
        if isinstance(m, owners):
            out.update(id(c) for c in m.children())
    return out


def tied_params(model: nn.Module) -> set[int]:
    """ids of parameters registered in more than one module (tied weights, e.g. an LM head that
    shares the embedding), which a per-layer rewrite would silently untie."""
    seen: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def find_layers(model: nn.Module, types: tuple[type, ...], *,
                owners: tuple[type, ...] = (nn.MultiheadAttention,), skip_tied: bool = False) -> Named:
    """(name, module) of every `types` layer, in registration order, leaving out the children of
    `owners` and, with `skip_tied`, layers whose weight is tied to another module."""
    owned = owned_children(model, owners)
    tied = tied_params(model) if skip_tied else set()
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, types) and id(m) not in owned and id(m.weight) not in tied]


def split_by_suffixes(found: Named, suffixes: Sequence[str], *,
                      method: str, hparam: str, what: str) -> tuple[Named, Named]:
    """(matching, rest) of `found` by name suffix. Every suffix must match something: a suffix
    that matches nothing is almost always a typo, so the error names it and the layers there are."""
    missing = [s for s in suffixes if not any(matches(n, s) for n, _ in found)]
    if missing:
        raise PluginError(f"{method}: {hparam} {missing} match no {what}; have {[n for n, _ in found]}")
    hit = [(n, m) for n, m in found if any(matches(n, s) for s in suffixes)]
    rest = [(n, m) for n, m in found if not any(matches(n, s) for s in suffixes)]
    return hit, rest


def select_targets(model: nn.Module, target_modules: Any, method: str, types: tuple[type, ...] = (nn.Linear,),
                   **find: Any) -> Named:
    """The layers a method's `target_modules` setting picks: every `types` layer ("all") or those
    whose name ends with one of the listed suffixes; none at all is an error naming the method."""
    found = find_layers(model, types, **find)
    what = "/".join(t.__name__ for t in types)
    if target_modules != "all":
        found, _ = split_by_suffixes(found, target_modules, method=method, hparam="target_modules", what=what)
    if not found:
        raise PluginError(f"{method}: the model has no {what} layer to work on")
    return found


def as_rank(size: float | None, method: str) -> int:
    """The integer rank the harness chose; an error names the method and the bad value."""
    if size is None or float(size) != int(size) or int(size) < 1:
        raise PluginError(f"method {method!r}: rank must be an integer >= 1, got {size!r}")
    return int(size)


def max_rank(layer: nn.Module) -> int:
    """The largest rank an update of this layer's weight can have: min(d_out, d_in) of a Linear,
    min(C_out / groups, C_in / groups x kh x kw) per group of a conv."""
    w = layer.weight
    return int(min(w.shape[0] // getattr(layer, "groups", 1), w[0].numel()))


def check_rank(rank: int, layer: nn.Module, name: str, method: str) -> None:
    """Refuse a rank above what the layer's weight can hold, naming the layer and its limit."""
    limit = max_rank(layer)
    if rank > limit:
        raise PluginError(f"method {method!r}: rank {rank} exceeds layer {name!r}'s largest rank {limit} "
                          f"(weight {tuple(layer.weight.shape)})")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """`model` with the submodule at dotted `name` swapped for `new`; the empty name is the model
    itself, which cannot be swapped in place, so callers must use the return value."""
    if name == "":
        return new
    model.set_submodule(name, new)
    return model


def swap_layers(model: nn.Module, names: Iterable[str], build: Callable[[str, nn.Module], nn.Module]) -> nn.Module:
    """A deep copy of `model` in which each named layer is replaced by `build(name, layer)`, where
    `layer` is the copy's own layer (a wrapper may keep it as its frozen `base`). The caller's
    model is never touched: the one rule every method must keep."""
    new = copy.deepcopy(model)
    for name in names:
        new = replace_module(new, name, build(name, new.get_submodule(name)))
    return new


def copy_swapping(model: nn.Module, swaps: Iterable[tuple[nn.Module, nn.Module]]) -> nn.Module:
    """A deep copy of `model` with each old module replaced by its new one. The deepcopy memo does
    the swap, so the old modules (often the largest dense weights) are never copied."""
    memo: dict[int, Any] = {id(old): new for old, new in swaps}
    return copy.deepcopy(model, memo)


HEAD_NAMES = ("head", "lm_head", "classifier", "out", "output")


def body_linears(model: nn.Module, skip_modules: Any, method: str) -> list[tuple[str, nn.Linear]]:
    """Every Linear but the head, for methods that leave the output layer dense (sltrain, afm).

    "auto" skips Linears whose last name part is in HEAD_NAMES or, when none is so named, the
    last Linear registered; a list of name suffixes skips exactly those."""
    linears = find_layers(model, (nn.Linear,), skip_tied=True)
    if skip_modules == "auto":
        heads = [n for n, _ in linears if n.rsplit(".", 1)[-1] in HEAD_NAMES]
        if not heads and linears:
            heads = [linears[-1][0]]
        return [(n, m) for n, m in linears if n not in heads]
    _, chosen = split_by_suffixes(linears, skip_modules, method=method, hparam="skip_modules", what="Linear")
    return chosen


class MergeableDelta(nn.Module):
    """A layer `base` plus an update `delta64()` (float64, detached) that can be folded into the base
    weight and taken out again, exactly up to one rounding; never merged implicitly on eval()."""

    merged: bool
    base: nn.Module

    def delta64(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight, so the forward costs exactly the dense FLOPs."""
        if not self.merged:
            w = self.base.weight
            w.copy_((w.double() + self.delta64()).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight."""
        if self.merged:
            w = self.base.weight
            w.copy_((w.double() - self.delta64()).to(w.dtype))
            self.merged = False


def merge_all(model: nn.Module, kind: type = MergeableDelta) -> int:
    """Merge every layer of type `kind` in place; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, kind)]
    for m in layers:
        m.merge()
    return len(layers)


def unmerge_all(model: nn.Module, kind: type = MergeableDelta) -> int:
    """Undo `merge_all`; returns how many layers were unmerged."""
    layers = [m for m in model.modules() if isinstance(m, kind)]
    for m in layers:
        m.unmerge()
    return len(layers)


# ---- the settings most layer-rewriting methods share (declare them as `params` entries) ---------
TARGET_MODULES = Param("all", str | list[str], help='"all" of the layers the method targets, or a list of '
                       "module-name suffixes (a suffix that matches nothing is an error)")
SKIP_MODULES = Param("auto", str | list[str], help='"auto" leaves the head dense (a Linear named head, lm_head, '
                     "classifier, out or output, else the last Linear); or a list of name suffixes to leave dense")
MERGED_INFERENCE = Param(False, bool, help="measure inference on the merged (deployed) model: dense cost; "
                         "training-step figures stay unmerged")
RECOVER = Param(False, bool, help="fine-tune after compressing, with the task's recover recipe")
SKIP_ABOVE_BREAK_EVEN = Param(True, bool, help="leave a layer dense where the factored form would be larger")
ALPHA = Param(8.0, float, low=1e-12, help="scale numerator: the update is multiplied by alpha / rank")
DROPOUT = Param(0.0, float, low=0.0, high=0.999, help="dropout on the update's input during training")
