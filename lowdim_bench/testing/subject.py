"""The thing a method check runs against: a method, a small task, a kind, a size and a seed.

Choices (also in docs/plugins.md, "The conformance kit"):
- The kit runs on the CPU, on the task's own model. For adapt, compress and head it stands in
  for a pretrained base with the fresh model plus seeded noise (scale 5% of each tensor's mean
  magnitude): every base tensor is then distinct and non-constant, as a trained one is, without
  training a base in every test.
- The default task is digits-mlp; a method whose targets name Conv2d and not Linear gets
  digits-cnn. The default size is a quarter of the way up the knob range.
- Training uses the harness's own loop (lowdim_bench.run.train) with the task's recipe for the
  kind, cut to `steps` steps.
- Merge methods run on a task with a family (the registered one with the smallest model unless
  a task is passed);
  each member is the base plus its own seeded noise (a stand-in for fine-tuning), nothing is
  trained after the merge, and outputs are compared through every member's view.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .. import api
from ..run.train import TrainResult, train

PURPOSE = {"train": "pretrain", "adapt": "finetune", "compress": "recover", "head": "finetune", "merge": "finetune"}
CONV_ONLY_TASK = "digits-cnn"
DEFAULT_TASK = "digits-mlp"


@dataclass
class KitOptions:
    """Knobs of the kit itself; the defaults keep each check to about a second on a laptop CPU."""

    seed: int = 0
    steps: int = 3
    batch_size: int = 16
    time_limit_s: float = 60.0
    atol: float = 1e-5
    rtol: float = 1e-4
    sweep_points: int = 6
    noise: float = 0.05


def registry_task(name: str, **options: Any) -> api.Task:
    from ..registry import Registry

    return Registry.load().task(name).cls(**options)


def default_task_name(method: type[api.Method]) -> str:
    targets = set(method.targets or ())
    if "Conv2d" in targets and not targets & {"Linear", "Module"}:
        return CONV_ONLY_TASK
    return DEFAULT_TASK


def family_task() -> api.Task:
    """The registered task with members whose default model is smallest (the cheapest smoke
    task for merge methods; ties broken by name)."""
    from ..registry import Registry

    reg = Registry.load()
    found = []
    for name in sorted(reg.tasks):
        try:
            task = reg.task(name).cls()
            if task.members():
                found.append((sum(p.numel() for p in task.make_model(0).parameters()), name, task))
        except Exception:  # a task that cannot build with defaults is no smoke task
            continue
    if not found:
        raise api.PluginError("no registered task has members (Task.members()); merge methods need one")
    return min(found, key=lambda f: f[:2])[2]


class MemberViews(nn.Module):
    """A merged model as scored: every member's view on the same inputs, outputs as a tuple."""

    def __init__(self, task: api.Task, merged: nn.Module, members: dict[str, nn.Module]) -> None:
        super().__init__()
        self.views = nn.ModuleList([task.member_view(merged, m, mod) for m, mod in members.items()])

    def forward(self, *args: Any, **kwargs: Any) -> tuple:
        return tuple(v(*args, **kwargs) for v in self.views)


def resolve_task(task: api.Task | str | type | None, method: type[api.Method] | None = None) -> api.Task:
    if isinstance(task, api.Task):
        return task
    if isinstance(task, type) and issubclass(task, api.Task):
        return task()
    if task is None:
        return registry_task(default_task_name(method) if method is not None else DEFAULT_TASK)
    if isinstance(task, str):
        return registry_task(task)
    raise TypeError(f"task must be a Task, a Task subclass or a registered task name, got {task!r}")


def perturb_(model: nn.Module, seed: int, scale: float) -> nn.Module:
    """Add seeded noise to every floating parameter, in place (a stand-in for pretraining)."""
    gen = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.layout == torch.strided:
                mag = float(p.abs().mean()) or 1.0
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * (scale * mag)
                p.add_(noise.to(p.dtype))
    return model


class MethodSubject:
    """A method under test with everything needed to apply, train and measure it."""

    def __init__(self, method: api.Method | type[api.Method], task: api.Task | str | type | None = None,
                 kind: str | None = None, size: float | None = None, options: KitOptions | None = None,
                 **hparams: Any) -> None:
        if isinstance(method, type):
            if not issubclass(method, api.Method):
                raise TypeError(f"expected a Method subclass or instance, got {method!r}")
            method = method(**hparams)
        elif hparams:
            raise TypeError("pass hyper-parameters with a Method class, not with an instance")
        self.method = method
        self.cls = type(method)
        self.options = options or KitOptions()
        self.kind = kind or self.cls.kind
        if self.kind not in self.cls.supported_kinds():
            raise api.PluginError(f"method {self.cls.name!r} does not run as {self.kind!r}; "
                                  f"it supports {list(self.cls.supported_kinds())}")
        if self.kind == "merge" and task is None:
            self.task = family_task()
        else:
            self.task = resolve_task(task, self.cls)
        self._members: dict[str, nn.Module] | None = None
        self.stage = "source" if self.kind in ("adapt", "head") else "target"
        self._splits: dict[str, Any] | None = None
        self._trained: nn.Module | None = None
        self.size = self.default_size() if size is None else size

    @property
    def label(self) -> str:
        knob = f" {self.cls.knob.name}={self.size:g}" if self.cls.knob is not None and self.size is not None else ""
        return f"method {self.cls.name!r} ({self.kind}{knob}) on {self.task.name!r}"

    @property
    def seed(self) -> int:
        return self.options.seed

    def splits(self) -> dict[str, Any]:
        if self._splits is None:
            self._splits = self.task.splits(self.stage, self.seed)
        return self._splits

    def base(self) -> nn.Module:
        """A fresh base model each call (see the module docstring)."""
        torch.manual_seed(self.seed)
        model = self.task.make_model(self.seed)
        if self.kind != "train":
            perturb_(model, self.seed, self.options.noise)
        return model.eval()

    def default_size(self) -> float | None:
        knob = self.cls.knob
        if knob is None:
            return None
        lo, hi = self.method.knob_range(self.base())
        if knob.integer:
            return int(lo + (int(hi) - int(lo)) // 4)
        return lo + (hi - lo) / 4

    def calibration(self) -> Iterator[Any]:
        gen = torch.Generator().manual_seed(self.seed + 1)
        batches = self.task.batches(self.splits()["train"], 64, gen)
        for _ in range(4):
            yield self.task.model_inputs(next(batches))

    def members(self) -> dict[str, nn.Module]:
        """Merge kind: the family's members, each the base plus its own seeded noise (twice the
        base's noise), built once; {} for other kinds."""
        if self.kind != "merge":
            return {}
        if self._members is None:
            self._members = {m: perturb_(self.base(), self.seed + 101 * (i + 1), 2 * self.options.noise).eval()
                             for i, m in enumerate(self.task.members())}
        return self._members

    def scored(self, model: nn.Module) -> nn.Module:
        """What the task scores: the model itself, or (merge) every member's view of it."""
        return MemberViews(self.task, model, self.members()) if self.kind == "merge" else model

    def context(self, seed: int | None = None, generator: torch.Generator | None = None) -> api.ApplyContext:
        seed = self.seed if seed is None else seed
        return api.ApplyContext(seed=seed, device=torch.device("cpu"), task=self.task,
                                generator=generator or torch.Generator().manual_seed(seed),
                                calibration=self.calibration, kind=self.kind, members=self.members())

    def apply(self, base: nn.Module | None = None, size: float | None | str = "default", seed: int | None = None,
              generator: torch.Generator | None = None) -> nn.Module:
        base = self.base() if base is None else base
        size = self.size if size == "default" else size
        return self.method.apply(base, size, self.context(seed, generator))

    def recipe(self, steps: int | None = None) -> api.Recipe:
        recipe = self.task.recipe(PURPOSE[self.kind])
        return recipe.replace(steps=self.options.steps if steps is None else steps, log_every=1)

    def train(self, model: nn.Module, steps: int | None = None) -> TrainResult:
        return train(model, self.task, self.method, self.splits()["train"], self.recipe(steps), self.seed,
                     torch.device("cpu"))

    def trained(self) -> nn.Module:
        """The applied model after the kit's few training steps (cached; callers get a copy)."""
        if self._trained is None:
            model = self.apply()
            if self.kind == "merge":  # a merge is final: nothing trains after it
                self._trained = model.eval()
                return copy.deepcopy(self._trained)
            if any(p.requires_grad for p in model.parameters()) or self.method.configure_optimizer(
                    model, 1e-3, 0.0) is not None:
                self.train(model)
            self._trained = model.eval()
        return copy.deepcopy(self._trained)

    def inputs(self, batch_size: int | None = None) -> tuple:
        inputs = self.task.example_inputs(batch_size or self.options.batch_size, torch.device("cpu"))
        return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
