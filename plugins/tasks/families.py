"""Task families for merge cells: one base model fine-tuned into several conflicting members.

A merge method gets the base and the fine-tuned members and must return one model that does all
the members' tasks. Each family here reuses a single-model task's data and model (imported, not
copied) and adds one stage per member, "member:<name>", with its own train/val/test split:

- digits-mlp-family, digits-cnn-family: the base is trained on the digits as shipped ("source").
  Each member changes the inputs (a fixed pixel permutation: transpose, mirror, rotation) or the
  labels (a derangement, parity, ...) so that the members pull the shared weights in different
  directions. Every member keeps a 10-way head of its own; `member_view` scores the merged model
  with that member's head, as FusionBench scores a merged CLIP encoder with each task's head. The
  split is digits-mlp's fixed stratified 60/20/20 split, so a member's test digits are never in
  another member's training split either.
- stdlib-lm-family: the base is stdlib-lm's source-stage model (trained on the stdlib's tests);
  each member is fine-tuned on one group of library packages (concurrency, web and mail, GUI,
  tooling). The head is shared (one byte vocabulary), so the whole model is merged.

"target" is the single-model task's target stage, kept so non-merge cells still run here; merge
cells never read it. Why these members and not others: docs/merging.md ("The families").
"""
from __future__ import annotations

from dataclasses import replace

import copy
import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import Param, PluginError, Task
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench_builtin.tasks._stdlib_corpus import build_corpus, part_files
from lowdim_bench_builtin.tasks.digits_cnn import DigitsCnnTask
from lowdim_bench_builtin.tasks.digits_mlp import LABEL_PERMUTATION, DigitsSplit, DigitsTask, _load_digits, split_indices
from lowdim_bench_builtin.tasks.stdlib_lm import ByteSplit, StdlibLM

MEMBER_PREFIX = "member:"

# ---- digits members: (input transform, label map) -----------------------------------------------
DIGIT_MEMBERS: dict[str, tuple[str, str]] = {
    "transpose": ("transpose", "identity"),  # mirrored across the main diagonal
    "flip-lr": ("flip-lr", "identity"),
    "flip-ud": ("flip-ud", "identity"),
    "rot90": ("rot90", "identity"),
    "permute": ("none", "permute"),  # digits-mlp's fixed label derangement
    "parity": ("none", "parity"),  # even / odd (2 of the 10 outputs used)
    "mod3": ("none", "mod3"),
    "high": ("none", "high"),  # digit >= 5
}
DEFAULT_DIGIT_MEMBERS = ["transpose", "flip-lr", "flip-ud", "rot90"]


def transform_inputs(x: np.ndarray, how: str) -> np.ndarray:
    """(n, 64) pixels under a fixed pixel permutation (each is a bijection of the 8x8 grid)."""
    img = x.reshape(-1, 8, 8)
    out = {"none": img, "transpose": img.transpose(0, 2, 1), "flip-lr": img[:, :, ::-1],
           "flip-ud": img[:, ::-1, :], "rot90": np.rot90(img, 1, axes=(1, 2))}[how]
    return np.ascontiguousarray(out).reshape(-1, 64)


def map_labels(y: np.ndarray, how: str) -> np.ndarray:
    if how == "identity":
        return y
    if how == "permute":
        return np.asarray(LABEL_PERMUTATION, dtype=np.int64)[y]
    if how == "parity":
        return y % 2
    if how == "mod3":
        return y % 3
    if how == "high":
        return (y >= 5).astype(np.int64)
    raise PluginError(f"unknown label map {how!r}")


def swap_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """`model` with its `head` child replaced by `head`, sharing every other module and tensor.

    A shallow copy with its own child table: the view's body parameters ARE the merged model's
    (so merge methods can train through the view and find which tensors it uses by identity),
    and neither the merged model nor the member is changed."""
    view = copy.copy(model)
    object.__setattr__(view, "_modules", {**model._modules, "head": head})
    return view


class CosineHead(nn.Module):
    """logits = scale * cos(feature, class weight), as CLIP's zero-shot heads score images (with a
    fixed temperature): a merge cannot buy confidence by scaling the features up, which a linear
    head rewards and which entropy minimisation then exploits (docs/merging.md)."""

    def __init__(self, head: nn.Linear, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(head.weight.detach().clone())
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


def kept_member(merged: nn.Module, member: str) -> nn.Module | None:
    """The member itself when `merged` keeps every member (the `individual` reference's
    `member_models`), so that row is scored by each member alone; else None."""
    kept = getattr(merged, "member_models", None)
    return kept[member] if isinstance(kept, nn.ModuleDict) and member in kept else None


def member_name(task: Task, stage: str) -> str:
    name = stage[len(MEMBER_PREFIX):]
    if name not in task.members():
        raise PluginError(f"task {task.name!r}: unknown member {name!r}; members: {task.members()}")
    return name


def check_members(task_name: str, members: list[str], known: list[str], at_least: int = 2) -> None:
    unknown = [m for m in members if m not in known]
    if unknown:
        raise PluginError(f"task {task_name!r}: unknown member(s) {unknown}; known: {known}")
    if len(set(members)) != len(members) or len(members) < at_least:
        raise PluginError(f"task {task_name!r}: members must be {at_least}+ distinct names, got {members}")


class DigitsFamily:
    """The member stages and head-swapping view shared by the two digits families (a mixin)."""

    options: dict[str, Any]
    name: str
    image_shape: tuple[int, ...] = (64,)

    def members(self) -> list[str]:
        return list(self.options["members"])

    def member_view(self, merged: nn.Module, member: str, member_model: nn.Module) -> nn.Module:
        kept = kept_member(merged, member)
        if kept is not None:
            return kept
        return swap_head(merged, member_model.head)

    def make_model(self, seed: int) -> nn.Module:
        model = super().make_model(seed)  # type: ignore[misc]
        if self.options["head_scale"] > 0:
            model.head = CosineHead(model.head, float(self.options["head_scale"]))
        if self.options["frozen_head"]:
            model.head.requires_grad_(False)
        return model

    def _family_fingerprint(self, parent: str) -> str:
        spec = ";".join(f"{m}={DIGIT_MEMBERS[m]}" for m in self.members())
        return hashlib.sha256(f"{parent}\nfamily/v1 {spec}".encode()).hexdigest()

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        if not stage.startswith(MEMBER_PREFIX):
            return super().splits(stage, seed)  # type: ignore[misc]
        name = member_name(self, stage)  # type: ignore[arg-type]
        if stage not in self._cache:  # type: ignore[attr-defined]
            x, y = _load_digits()
            parts = split_indices(y)  # the fixed split of the original labels, shared by every stage
            how_x, how_y = DIGIT_MEMBERS[name]
            x, y = transform_inputs(x, how_x), map_labels(y, how_y)
            self._cache[stage] = {  # type: ignore[attr-defined]
                part: DigitsSplit(torch.from_numpy(x[idx].copy()).view(-1, *self.image_shape),
                                  torch.from_numpy(y[idx].copy()))
                for part, idx in parts.items()
            }
        return dict(self._cache[stage])  # type: ignore[attr-defined]


SCALE_HELP = "> 0: a cosine head, logits = scale * cos(features, class weights); 0: a Linear head"
FROZEN_HELP = "the head keeps its random init in base and members (never trained): every change is in the body"
MEMBERS_HELP = "family members, one stage 'member:<name>' each; known: " + ", ".join(DIGIT_MEMBERS)


class DigitsMlpFamily(DigitsFamily, DigitsTask):
    name = "digits-mlp-family"
    params = {**DigitsTask.params, "shift": replace(DigitsTask.params["shift"], default="none"),
              "finetune_lr": replace(DigitsTask.params["finetune_lr"], default=1e-3),
              "members": Param(list(DEFAULT_DIGIT_MEMBERS), list[str], help=MEMBERS_HELP),
              "frozen_head": Param(True, bool, help=FROZEN_HELP),
              "head_scale": Param(16.0, float, low=0.0, help=SCALE_HELP)}
    description = (
        "digits-mlp's MLP and data as a merge family: a base trained on the digits as shipped, fine-tuned into "
        "members that permute the pixels (transpose, mirror, rotate) or remap the labels, each with its own head. "
        "Quality: test accuracy per member."
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        check_members(self.name, self.options["members"], list(DIGIT_MEMBERS))

    def fingerprint(self) -> str:
        return self._family_fingerprint(DigitsTask.fingerprint(self))


class DigitsCnnFamily(DigitsFamily, DigitsCnnTask):
    name = "digits-cnn-family"
    image_shape = (1, 8, 8)
    # finetune lr stays 1e-2: at 1e-3 members reach only 0.57-0.74
    params = {**DigitsCnnTask.params, "shift": replace(DigitsCnnTask.params["shift"], default="none"),
              "members": Param(list(DEFAULT_DIGIT_MEMBERS), list[str], help=MEMBERS_HELP),
              "frozen_head": Param(True, bool, help=FROZEN_HELP),
              "head_scale": Param(16.0, float, low=0.0, help=SCALE_HELP)}
    description = (
        "digits-cnn's CNN and data as a merge family (members as digits-mlp-family's), each member with its own "
        "head. Quality: test accuracy per member."
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        check_members(self.name, self.options["members"], list(DIGIT_MEMBERS))

    def fingerprint(self) -> str:
        return self._family_fingerprint(DigitsCnnTask.fingerprint(self))


# ---- stdlib-lm family: library packages by theme ------------------------------------------------
# Each group lists path prefixes of non-test library files; a prefix missing from this Python
# (distutils left in 3.12, lib2to3 in 3.13) only makes its group smaller.
LM_MEMBERS: dict[str, tuple[str, ...]] = {
    "concurrency": ("asyncio/", "concurrent/", "multiprocessing/"),
    "web": ("email/", "http/", "urllib/", "html/", "xml/", "json/"),
    "gui": ("tkinter/", "idlelib/", "turtledemo/"),
    "tooling": ("importlib/", "unittest/", "logging/", "distutils/", "lib2to3/", "ensurepip/"),
}


@functools.lru_cache(maxsize=16)
def _group_corpus(root: str, group: str, max_bytes: int):
    files = [p for p in part_files(Path(root), "library") if p.startswith(LM_MEMBERS[group])]
    if not files:
        raise PluginError(f"stdlib-lm-family: member {group!r} finds no files under {root} with prefixes "
                          f"{list(LM_MEMBERS[group])}")
    return build_corpus(Path(root), f"library:{group}", files, max_bytes)


class StdlibLmFamily(StdlibLM):
    name = "stdlib-lm-family"
    params = {
        **StdlibLM.params,
        "members": Param(list(LM_MEMBERS), list[str], help="library groups, one member each; known: "
                         + ", ".join(f"{k} ({' '.join(v)})" for k, v in LM_MEMBERS.items())),
        "member_corpus_bytes": Param(400_000, int, low=1000, help="byte cap per member corpus (80/10/10 split)"),
    }
    description = (
        "stdlib-lm's byte-level decoder as a merge family: the source-stage base (trained on the stdlib's tests) "
        "fine-tuned on one group of library packages per member; the whole model is merged. Quality: bits per "
        "byte on each member's test split."
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        check_members(self.name, self.options["members"], list(LM_MEMBERS))

    def members(self) -> list[str]:
        return list(self.options["members"])

    def member_view(self, merged: nn.Module, member: str, member_model: nn.Module) -> nn.Module:
        kept = kept_member(merged, member)
        return kept if kept is not None else merged

    def _corpus(self, member: str):
        return _group_corpus(self.root, member, int(self.options["member_corpus_bytes"]))

    def fingerprint(self) -> str:
        h = hashlib.sha256(StdlibLM.fingerprint(self).encode())
        for m in self.members():
            h.update(f"\nfamily/v1 {m}={self._corpus(m).fingerprint()}".encode())
        return h.hexdigest()

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        if not stage.startswith(MEMBER_PREFIX):
            return super().splits(stage, seed)
        name = member_name(self, stage)
        out: dict[str, Any] = {}
        for part, raw in self._corpus(name).data.items():
            if len(raw) < self.context + 2:
                raise PluginError(f"task {self.name!r}: the {part} split of member {name!r} has {len(raw)} bytes, too "
                                  f"few for a window of {self.context + 1}; raise member_corpus_bytes")
            out[part] = ByteSplit(f"{name}/{part}", torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        return out


@hookimpl
def register_tasks(register) -> None:
    register(DigitsMlpFamily)
    register(DigitsCnnFamily)
    register(StdlibLmFamily)
