"""The public API a plugin is written against: Method, Task, Metric and what they exchange.

Everything a plugin needs is here, so a third-party plugin imports `lowdim_bench.api` and
nothing deeper. The harness (run/) calls these in one fixed order per cell:
task.splits -> base model -> method.apply -> train (recipe + method hooks) -> metrics.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
from torch import nn

KINDS = ("compress", "adapt", "train", "head", "merge")


class PluginError(Exception):
    """A plugin broke the contract (bad hyper-parameter, wrong kind, ...). Message says which."""


@dataclass(frozen=True)
class Knob:
    """A method's one size knob (rank, density, subspace dimension).

    `high=None` means the upper end depends on the model (e.g. full rank); the method then
    answers it in `Method.knob_range`. Budget search assumes the counted parameters grow
    monotonically with the knob.
    """

    name: str
    low: float
    high: float | None = None
    integer: bool = True


@dataclass(frozen=True)
class Quality:
    """How a task scores a model: name, unit and direction."""

    name: str
    unit: str
    higher_is_better: bool


@dataclass
class Recipe:
    """One training run's settings. A suite may override any field per task or method."""

    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.1
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float | None = 1.0
    log_every: int = 20

    def replace(self, **changes: Any) -> "Recipe":
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise PluginError(f"unknown recipe field(s) {sorted(unknown)}; known: {sorted(self.__dataclass_fields__)}")
        new = copy.copy(self)
        for k, v in changes.items():
            setattr(new, k, v)
        return new


@dataclass
class ApplyContext:
    """What `Method.apply` may use besides the model: seed, device and calibration inputs."""

    seed: int
    device: torch.device
    task: "Task"
    calibration: Callable[[], Iterable[Any]] = lambda: ()  # yields model inputs (tuples)
    generator: torch.Generator | None = None


@dataclass
class Measurement:
    """One measured value. `phase` and `batch_size` qualify it (e.g. latency of inference at 64)."""

    metric: str
    value: float
    unit: str
    phase: str | None = None
    batch_size: int | None = None


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class Method:
    """A low-dimensional method. Subclasses set the class attributes and implement `apply`.

    `kind` is what the method is; `kinds` lists every kind it can run under (dense runs under
    all of them as the reference). `defaults` are the other hyper-parameters; a suite may
    override them, and an unknown name is an error.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ()
    knob: ClassVar[Knob | None] = None
    defaults: ClassVar[dict[str, Any]] = {}
    targets: ClassVar[tuple[str, ...]] = ("Linear",)
    identity_at_init: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, **hparams: Any) -> None:
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise PluginError(
                f"method {self.name!r}: unknown hyper-parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.defaults) or 'none'}"
            )
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}

    @classmethod
    def supported_kinds(cls) -> tuple[str, ...]:
        return cls.kinds or (cls.kind,)

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        """Smallest and largest sensible knob values for this model."""
        if self.knob is None:
            raise PluginError(f"method {self.name!r} has no size knob")
        if self.knob.high is None:
            raise PluginError(f"method {self.name!r} must implement knob_range: its knob has no fixed upper end")
        return self.knob.low, self.knob.high

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        """Return a new model in the method's form. Never mutate `model` (deep-copy first)."""
        raise NotImplementedError

    # Optional training hooks, for methods whose training differs from plain AdamW on the loss.
    def configure_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer | None:
        """Return an optimizer to use instead of the harness's AdamW, or None."""
        return None

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the task loss each step (a regulariser), or None."""
        return None

    def on_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step (masks, projections, pruning schedules)."""

    def for_inference(self, model: nn.Module) -> nn.Module:
        """The deployed form, measured for FLOPs, latency and memory (e.g. LoRA merged). After training."""
        return model


class Task:
    """A workload: data, model, training recipe and quality metric.

    `options` are the sizes and settings a suite may override (model width, steps, ...), so a
    GPU user scales a task from the suite file. Split objects are opaque to the harness: it only
    hands them back to `batches`, `evaluate` and `loss`.

    Stages: "target" is the task people are scored on; "source" is what an adapt base model is
    pretrained on (a different label set, input distribution or corpus part). Compress and the
    reference models start from a model trained on "target".
    """

    name: ClassVar[str]
    quality: ClassVar[Quality]
    defaults: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise PluginError(
                f"task {self.name!r}: unknown option(s) {sorted(unknown)}; known: {sorted(self.defaults) or 'none'}"
            )
        self.options: dict[str, Any] = {**self.defaults, **options}

    def fingerprint(self) -> str:
        """Identifies the data this task reads (file hashes, generator version); goes into cache keys."""
        return ""

    def make_model(self, seed: int) -> nn.Module:
        """A freshly initialised model (what `train` methods start from)."""
        raise NotImplementedError

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        """{"train", "val", "test"} split objects for a stage ("target" or "source")."""
        raise NotImplementedError

    def recipe(self, purpose: str) -> Recipe:
        """Training recipe for "pretrain" (from scratch), "finetune" (adapt) or "recover" (after compress)."""
        return Recipe()

    def batches(self, split: Any, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """An endless stream of shuffled training batches from a split."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: Any) -> float:
        """The quality metric on a whole split, in `quality.unit`."""
        raise NotImplementedError

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple:
        """Inputs for one forward call at this batch size (FLOPs, latency, memory)."""
        raise NotImplementedError

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        """A training batch at this batch size (training-step latency and memory)."""
        raise NotImplementedError

    def to_device(self, batch: Any, device: torch.device) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(device)
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(b, device) for b in batch)
        return batch


@dataclass
class MeasureContext:
    """What a Metric sees: the trained model, its deployed form, and how to exercise them.

    `model` is the training form (for training-step figures); `inference_model` is what
    `Method.for_inference` returned (for forward FLOPs, inference latency and memory).
    """

    task: Task
    method: Method
    model: nn.Module
    inference_model: nn.Module
    kind: str
    device: torch.device
    protocol: dict[str, Any]
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    dense_params: int
    extras: dict[str, Any] = field(default_factory=dict)


class Metric:
    """A measurement a suite can ask for by name (`measure = ["flops", ...]`)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        raise NotImplementedError
