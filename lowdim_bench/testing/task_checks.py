"""Conformance checks for a Task: declaration, disjoint splits, reproducible and cached base
models, and the interface the harness calls.

Split disjointness is checked by content: each sample's bytes (all tensors that share the
split's leading dimension, labels included) are hashed, and no hash may be in two splits of a
stage. A task whose split objects hold no per-sample tensors (a byte stream, a file list) can
declare `split_keys(split) -> iterable of hashable` and the kit compares those instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import tempfile
import traceback
from typing import Any, Callable, Iterator

import torch

from .. import api
from ..run import cache
from ..run.models import seed_everything
from ..run.train import train
from .results import CheckResult, failed, passed, skipped

SPLITS = ("train", "val", "test")
STAGES = ("target", "source")


def _label(task: api.Task) -> str:
    return f"task {task.name!r}"


def _tensors(split: Any) -> list[torch.Tensor]:
    if isinstance(split, torch.Tensor):
        return [split]
    if isinstance(split, (tuple, list)):
        return [t for t in split if isinstance(t, torch.Tensor)]
    if isinstance(split, dict):
        return [t for t in split.values() if isinstance(t, torch.Tensor)]
    if dataclasses.is_dataclass(split) or hasattr(split, "__dict__"):
        return [t for t in vars(split).values() if isinstance(t, torch.Tensor)]
    return []


def sample_keys(task: api.Task, split: Any) -> set | None:
    """Per-sample keys of a split: the task's split_keys hook, else a hash of each sample's rows;
    None when the split exposes no per-sample tensors."""
    hook = getattr(task, "split_keys", None)
    if callable(hook):
        return set(hook(split))
    tensors = _tensors(split)
    rows = [t for t in tensors if t.dim() >= 2]
    if not rows:
        return None
    n = rows[0].shape[0]
    parts = [t for t in tensors if t.dim() >= 1 and t.shape[0] == n and t.layout == torch.strided]
    keys = set()
    for i in range(n):
        h = hashlib.sha1()
        for t in parts:
            h.update(t[i].detach().cpu().numpy().tobytes())
        keys.add(h.hexdigest())
    return keys


def check_task_declaration(task: api.Task) -> CheckResult:
    name = "declaration"
    problems = []
    if not isinstance(getattr(task, "name", None), str) or not task.name:
        problems.append(f"name {getattr(task, 'name', None)!r} is not a non-empty string")
    if not task.description:
        problems.append("description is empty (it is what `lowdim-bench list tasks` shows)")
    if not isinstance(task.defaults, dict):
        problems.append(f"defaults {task.defaults!r} is not a dict")
    if problems:
        return failed(name, _label(task), "a well-formed Task declaration", "; ".join(problems))
    return passed(name, _label(task))


def check_quality_direction(task: api.Task) -> CheckResult:
    """The quality metric names itself, its unit and whether higher is better."""
    name = "quality_direction"
    q = getattr(task, "quality", None)
    if not isinstance(q, api.Quality):
        return failed(name, _label(task), "quality = Quality(name, unit, higher_is_better)", f"{q!r}")
    if not q.name or not q.unit or not isinstance(q.higher_is_better, bool):
        return failed(name, _label(task), "a non-empty name and unit and a bool higher_is_better", f"{q!r}")
    return passed(name, _label(task), f"{q.name} in {q.unit}, {'higher' if q.higher_is_better else 'lower'} is better")


def check_splits_disjoint(task: api.Task, seed: int = 0) -> CheckResult:
    name = "splits_disjoint"
    seen, unchecked = [], []
    for stage in STAGES:
        try:
            splits = task.splits(stage, seed)
        except api.PluginError:
            if stage == "target":
                raise
            unchecked.append(f"no {stage} stage")
            continue
        missing = [k for k in SPLITS if k not in splits]
        if missing:
            return failed(name, _label(task), f"splits {SPLITS} for stage {stage!r}", f"keys {sorted(splits)}")
        keys = {k: sample_keys(task, splits[k]) for k in SPLITS}
        if any(v is None for v in keys.values()):
            unchecked.append(f"{stage}: split objects expose no per-sample tensors and the task has no split_keys hook")
            continue
        for i, a in enumerate(SPLITS):
            for b in SPLITS[i + 1:]:
                common = keys[a] & keys[b]
                if common:
                    return failed(name, _label(task), f"no sample in both {a} and {b} (stage {stage!r})",
                                  f"{len(common)} shared samples ({len(keys[a])} in {a}, {len(keys[b])} in {b})")
        seen.append(f"{stage}: " + "/".join(str(len(keys[k])) for k in SPLITS))
    if not seen:
        return skipped(name, _label(task), "; ".join(unchecked))
    return passed(name, _label(task), "; ".join(seen + unchecked))


def _states_equal(a: dict, b: dict) -> list[str]:
    if a.keys() != b.keys():
        return [f"keys differ: {sorted(a.keys() ^ b.keys())[:5]}"]
    return [k for k in a if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k])]


@contextlib.contextmanager
def _cache_dir(path: str) -> Iterator[None]:
    old = os.environ.get("LOWDIM_BENCH_CACHE")
    os.environ["LOWDIM_BENCH_CACHE"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LOWDIM_BENCH_CACHE", None)
        else:
            os.environ["LOWDIM_BENCH_CACHE"] = old


def _fresh(task: api.Task, seed: int) -> dict:
    """make_model(seed) under the harness's seeding (run/models.py: seed_everything first), with
    the global RNG moved before, so only what the harness fixes can make two calls agree."""
    torch.manual_seed(int.from_bytes(os.urandom(2), "little"))
    seed_everything(seed)
    return task.make_model(seed).state_dict()


def _global_rng_note(task: api.Task, seed: int) -> str:
    """Whether make_model draws from the global RNG (fine under the harness, worth knowing)."""
    torch.manual_seed(1)
    a = task.make_model(seed).state_dict()
    torch.manual_seed(2)
    return "" if not _states_equal(a, task.make_model(seed).state_dict()) else \
        "make_model draws from the global RNG: reproducible only under the harness's seeding"


def check_base_reproducible(task: api.Task, seed: int = 0, steps: int = 3) -> CheckResult:
    """Under the harness's seeding (seed_everything before make_model and before training, as
    run/models.base_model does): same seed -> same weights, fresh and after a short pretraining,
    whatever the global RNG held before (dropout and other global draws are fine); another seed ->
    other weights; the base cache returns what was built. A task with a pretrained base
    (`Task.pretrained`) must return the same weights twice."""
    name = "base_reproducible"
    ready = task.pretrained("target", seed)
    if ready is not None:
        differ = _states_equal(ready.state_dict(), task.pretrained("target", seed).state_dict())
        if differ:
            return failed(name, _label(task), "pretrained('target', seed) twice gives the same weights",
                          f"differ: {differ[:5]}")
        return passed(name, _label(task), "pretrained base: the same weights twice (no pretraining to check)")
    a = _fresh(task, seed)
    differ = _states_equal(a, _fresh(task, seed))
    if differ:
        return failed(name, _label(task), "make_model(seed) twice gives the same weights under the harness's seeding "
                      "(seed_everything(seed) first); draw from the global RNG or a generator seeded with `seed`",
                      f"differ: {differ[:5]}")
    if not _states_equal(a, _fresh(task, seed + 1)):
        return failed(name, _label(task), "make_model with another seed gives other weights", "identical weights")
    if task.fingerprint() != task.fingerprint():
        return failed(name, _label(task), "a stable fingerprint()", "two calls differ")
    recipe = task.recipe("pretrain").replace(steps=steps, log_every=1)

    def build() -> torch.nn.Module:
        torch.manual_seed(int.from_bytes(os.urandom(2), "little"))  # moved: the harness re-seeds below
        seed_everything(seed)
        model = task.make_model(seed)
        seed_everything(seed)  # as the worker does before training (dropout masks come from it)
        train(model, task, None, task.splits("target", seed)["train"], recipe, seed, torch.device("cpu"))
        return model

    first, second = build().state_dict(), build().state_dict()
    differ = _states_equal(first, second)
    if differ:
        return failed(name, _label(task), f"{steps} pretraining steps with one seed give the same weights twice",
                      f"differ: {differ[:5]}")
    with tempfile.TemporaryDirectory() as tmp, _cache_dir(tmp):
        built, hit1 = cache.cached_model(task, "target", seed, "kit", build)
        loaded, hit2 = cache.cached_model(task, "target", seed, "kit", build)
    if hit1 or not hit2:
        return failed(name, _label(task), "a cache miss then a hit", f"hits: {hit1}, {hit2}")
    differ = _states_equal(built.state_dict(), loaded.state_dict())
    if differ:
        return failed(name, _label(task), "the cached base equals the one built", f"differ: {differ[:5]}")
    return passed(name, _label(task), _global_rng_note(task, seed))


def check_task_interface(task: api.Task, seed: int = 0, batch_size: int = 8) -> CheckResult:
    """What the harness calls: recipes, batches, loss, evaluate, example inputs and batches."""
    name = "interface"
    cpu = torch.device("cpu")
    model = task.pretrained("target", seed) or task.make_model(seed)
    problems = []
    for purpose in ("pretrain", "finetune", "recover"):
        if not isinstance(task.recipe(purpose), api.Recipe):
            problems.append(f"recipe({purpose!r}) is not a Recipe")
    splits = task.splits("target", seed)
    batch = next(task.batches(splits["train"], batch_size, torch.Generator().manual_seed(seed)))
    loss = task.loss(model, batch)
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and math.isfinite(float(loss.detach()))):
        problems.append(f"loss on a training batch is not a finite scalar tensor: {loss!r}")
    ex_loss = task.loss(model, task.example_batch(batch_size, cpu))
    if not (isinstance(ex_loss, torch.Tensor) and ex_loss.numel() == 1):
        problems.append("loss on example_batch is not a scalar tensor")
    with torch.no_grad():
        api.Inputs.of(task.example_inputs(batch_size, cpu)).call(model)
        task.model_inputs(batch).call(model)  # what calibration hands a method
    value = task.evaluate(model, splits["val"])
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"evaluate returned {value!r}, not a finite number")
    if problems:
        return failed(name, _label(task), "the Task interface the harness calls", "; ".join(problems))
    return passed(name, _label(task), f"untrained {task.quality.name} {value:.4g}")


TASK_CHECKS: dict[str, Callable[[api.Task], CheckResult]] = {
    "declaration": check_task_declaration,
    "quality_direction": check_quality_direction,
    "splits_disjoint": check_splits_disjoint,
    "base_reproducible": check_base_reproducible,
    "interface": check_task_interface,
}


def run_task_check(check: str, task: api.Task) -> CheckResult:
    if check not in TASK_CHECKS:
        raise KeyError(f"unknown task check {check!r}; known: {', '.join(TASK_CHECKS)}")
    try:
        return TASK_CHECKS[check](task)
    except Exception as exc:
        tb = traceback.format_exc().strip().splitlines()
        return failed(check, _label(task), "the check to run", f"{type(exc).__name__}: {exc} ({' | '.join(tb[-3:])})")
