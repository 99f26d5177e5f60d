"""The thing a method check runs against: a method, a small task, a kind, a size and a seed.

Choices (also in docs/plugins.md, "The conformance kit"):
- The kit runs on the CPU, on the task's own model. A task with a pretrained base
  (`Task.pretrained`) gives it; otherwise, for adapt, compress, head and merge the kit stands in
  for a pretrained base with the fresh model plus seeded noise (scale 5% of each tensor's mean
  magnitude): every base tensor is then distinct and non-constant, as a trained one is, without
  training a base in every test. Models are built under the harness's seeding
  (run/models.seed_everything before make_model).
- The default task is digits-mlp; a method whose targets name Conv2d and not Linear gets
  digits-cnn; a merge method gets the kit's own family task (testing/family.py). The default
  size is a quarter of the way up the knob range.
- Merge: each member of the task's family is the base fine-tuned `steps` steps on its own stage
  (the harness's loop and the task's finetune recipe), as the harness builds them, only shorter.
- Training uses the harness's own loop (lowdim_bench.run.train) with the task's recipe for the
  kind, cut to `steps` steps. Merges are not trained (the harness runs them one-shot).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .. import api
from ..run.models import seed_everything
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


def resolve_method(method: api.Method | type[api.Method] | str) -> api.Method | type[api.Method]:
    """A Method class or instance as given; a string is a registered (installed) method's name, so
    a plugin's tests can run a built-in method on their own task without importing the registry."""
    if isinstance(method, str):
        from ..registry import Registry

        return Registry.load().method(method).cls
    return method


def default_task_name(method: type[api.Method]) -> str:
    targets = set(method.targets or ())
    if "Conv2d" in targets and not targets & {"Linear", "Module"}:
        return CONV_ONLY_TASK
    return DEFAULT_TASK


def resolve_task(task: api.Task | str | type | None, method: type[api.Method] | None = None) -> api.Task:
    if isinstance(task, api.Task):
        return task
    if isinstance(task, type) and issubclass(task, api.Task):
        return task()
    if task is None:
        if method is not None and method.kind == "merge":
            from .family import KitFamilyTask

            return KitFamilyTask()
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

    def __init__(self, method: api.Method | type[api.Method] | str, task: api.Task | str | type | None = None,
                 kind: str | None = None, size: float | None = None, options: KitOptions | None = None,
                 **hparams: Any) -> None:
        method = resolve_method(method)
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
        self.task = resolve_task(task, self.cls)
        if self.kind == "merge" and not self.task.members():
            raise api.PluginError(f"merge method {self.cls.name!r} needs a task with a family (Task.members()); "
                                  f"task {self.task.name!r} has none")
        self.stage = "source" if self.kind in ("adapt", "head", "merge") else "target"
        self._splits: dict[str, Any] | None = None
        self._trained: nn.Module | None = None
        self._members: dict[str, nn.Module] | None = None
        self._inputs: dict[int, api.Inputs] = {}
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
        if self.kind != "train":
            ready = self.task.pretrained(self.stage, self.seed)
            if ready is not None:
                return ready.eval()
        seed_everything(self.seed)
        model = self.task.make_model(self.seed)
        if self.kind != "train":
            perturb_(model, self.seed, self.options.noise)
        return model.eval()

    def members(self) -> dict[str, nn.Module]:
        """Merge: the family's members, each the base fine-tuned on its own stage (built once)."""
        if self.kind != "merge":
            return {}
        if self._members is None:
            base, out = self.base(), {}
            recipe = self.task.recipe("finetune").replace(steps=self.options.steps, log_every=1)
            for name in self.task.members():
                member = copy.deepcopy(base).requires_grad_(True)
                seed_everything(self.seed)
                train(member, self.task, None, self.task.splits(f"member:{name}", self.seed)["train"], recipe,
                      self.seed, torch.device("cpu"))
                out[name] = member.eval()
            self._members = out
        return self._members

    def default_size(self) -> float | None:
        knob = self.cls.knob
        if knob is None:
            return None
        lo, hi = self.method.knob_range(self.base())
        if knob.integer:
            return int(lo + (int(hi) - int(lo)) // 4)
        return lo + (hi - lo) / 4

    def calibration(self) -> Iterator[api.Inputs]:
        gen = torch.Generator().manual_seed(self.seed + 1)
        batches = self.task.batches(self.splits()["train"], 64, gen)
        for _ in range(4):
            yield self.task.model_inputs(next(batches))

    def context(self, seed: int | None = None, generator: torch.Generator | None = None) -> api.ApplyContext:
        seed = self.seed if seed is None else seed
        return api.ApplyContext(seed=seed, device=torch.device("cpu"), task=self.task,
                                generator=generator or torch.Generator().manual_seed(seed),
                                calibration=self.calibration, kind=self.kind, members=self.members(),
                                recipe=self.recipe())

    def apply(self, base: nn.Module | None = None, size: float | None | str = "default", seed: int | None = None,
              generator: torch.Generator | None = None) -> nn.Module:
        base = self.base() if base is None else base
        size = self.size if size == "default" else size
        return self.method.apply(base, size, self.context(seed, generator))

    def recipe(self, steps: int | None = None) -> api.Recipe:
        recipe = self.task.recipe(PURPOSE[self.kind])
        if self.kind == "merge":
            steps = 0  # merges are one-shot, as in the harness
        return recipe.replace(steps=self.options.steps if steps is None else steps, log_every=1)

    def train(self, model: nn.Module, steps: int | None = None) -> TrainResult:
        seed_everything(self.seed)  # as the harness does before training (dropout draws from the global RNG)
        return train(model, self.task, self.method, self.splits()["train"], self.recipe(steps), self.seed,
                     torch.device("cpu"))

    def trains(self, model: nn.Module) -> bool:
        """Whether the harness would train this applied model (merges never are)."""
        if self.kind == "merge":
            return False
        return any(p.requires_grad for p in model.parameters()) or \
            self.method.configure_optimizer(model, 1e-3, 0.0) is not None

    def trained(self) -> nn.Module:
        """The applied model after the kit's few training steps (cached; callers get a copy)."""
        if self._trained is None:
            model = self.apply()
            if self.trains(model):
                self.train(model)
            self._trained = model.eval()
        return copy.deepcopy(self._trained)

    def inputs(self, batch_size: int | None = None) -> api.Inputs:
        """The task's example inputs at a batch size (drawn once per size, so every check that
        compares two forwards sees the same inputs even when the task draws them at random)."""
        bs = batch_size or self.options.batch_size
        if bs not in self._inputs:
            self._inputs[bs] = api.Inputs.of(self.task.example_inputs(bs, torch.device("cpu")))
        return self._inputs[bs]
