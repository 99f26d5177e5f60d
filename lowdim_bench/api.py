"""The public API a plugin is written against: Method, Task, Metric, Analysis and what they exchange.

Everything a plugin needs is here (plus `lowdim_bench.layers` for methods that swap layers), so a
third-party plugin imports `lowdim_bench.api` and nothing deeper. The harness calls these in one
fixed order per cell:
task.splits -> base model (trained, cached, or Task.pretrained) -> method.apply -> train (recipe +
method hooks) -> metrics (which see the base, the applied and the trained model); after all cells,
the analyses read the run's records and saved artefacts. docs/plugins.md documents every type.
"""
from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
from torch import nn

from .analysis import (Analysis, AnalysisContext, AnalysisRecord, AnalysisResult, ArtefactInfo, Artefacts,
                       ConfigError, SuiteView)
from .hparams import Param, PluginError, check_all
from .inputs import Inputs, to_device
from .solving import Instance, Solution, Stopwatch, Trace, TraceLog, no_trace, numpy_rng, split_seed

__all__ = ["KINDS", "PluginError", "ConfigError", "Param", "Knob", "Quality", "Recipe", "Inputs", "ApplyContext",
           "Measurement", "MeasureContext", "Method", "Task", "Metric", "Analysis", "AnalysisContext",
           "AnalysisResult", "AnalysisRecord", "Artefacts", "ArtefactInfo", "SuiteView", "trainable", "to_device",
           "Problem", "Solver", "Instance", "Solution", "Stopwatch", "Trace", "TraceLog", "no_trace", "numpy_rng",
           "split_seed"]

KINDS = ("compress", "adapt", "train", "head", "merge", "solve")


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
    help: str = ""


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
    """What `Method.apply` may use besides the model.

    calibration: yields `Inputs` from the task's training split (exactly what the model takes).
    members: merge cells only, the fine-tuned models of the task's family by member name
    (read-only: never mutate them). recipe: the training recipe the cell will run after apply
    (steps for schedules such as AdaLoRA's; the lr may still be chosen from a grid)."""

    seed: int
    device: torch.device
    task: "Task"
    calibration: Callable[[], Iterable[Inputs]] = lambda: ()
    generator: torch.Generator | None = None
    kind: str = ""
    members: dict[str, nn.Module] = field(default_factory=dict)
    recipe: Recipe | None = None


@dataclass
class Measurement:
    """One measured value. `phase`, `batch_size` and `seq_len` qualify it (latency of inference at
    batch 64 and 128 tokens); `higher_is_better` is its direction (None: not a score or a cost).
    `step` makes it a point of a series (a solver's error at round `step`): series are kept out of
    the summary table and drawn as curves."""

    metric: str
    value: float
    unit: str
    phase: str | None = None
    batch_size: int | None = None
    higher_is_better: bool | None = None
    seq_len: int | None = None
    step: int | None = None


def _derive_defaults(cls: type) -> None:
    """`defaults` of a class that declares `params`: the typed defaults, so `Cls.defaults[name]`
    reads the same whichever way a plugin declared its settings."""
    if "params" in cls.__dict__:  # a subclass that declares `params` lists them all ({**Parent.params, ...})
        cls.defaults = {**cls.__dict__.get("defaults", {}), **{k: p.default for k, p in cls.params.items()}}


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class Method:
    """A low-dimensional method. Subclasses set the class attributes and implement `apply`.

    `kind` is what the method is; `kinds` lists every kind it can run under (dense runs under
    all of them). `params` declares the other hyper-parameters (typed, see `Param`); a suite may
    override them, and an unknown name or a value of the wrong type or range is an error.
    `reference`: the entry a suite compares the others against (ratios, d_int90 baselines) unless
    the suite names its own `reference`.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ()
    knob: ClassVar[Knob | None] = None
    params: ClassVar[dict[str, Param]] = {}
    defaults: ClassVar[dict[str, Any]] = {}  # untyped form of `params`: types inferred from the values
    targets: ClassVar[tuple[str, ...]] = ("Linear",)
    identity_at_init: ClassVar[bool] = False
    reference: ClassVar[bool] = False
    description: ClassVar[str] = ""
    preload: ClassVar[tuple[str, ...]] = ()  # heavy modules its cells import: a warm server imports them once

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _derive_defaults(cls)

    def __init__(self, **hparams: Any) -> None:
        self.hparams: dict[str, Any] = check_all(type(self), "method", hparams)

    @classmethod
    def supported_kinds(cls) -> tuple[str, ...]:
        """Every kind the method runs under: `kinds`, or just `kind`."""
        return cls.kinds or (cls.kind,)

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        """Smallest and largest sensible knob values for this model."""
        if self.knob is None:
            raise PluginError(f"method {self.name!r} has no size knob")
        if self.knob.high is None:
            raise PluginError(f"method {self.name!r} must implement knob_range: its knob has no fixed upper end")
        return self.knob.low, self.knob.high

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        """Return a new model in the method's form. Never mutate `model` (deep-copy first).
        Merge methods get the base as `model` and the fine-tuned members in `ctx.members`."""
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

    `params` declares the options a suite may set (model width, steps, ...), so a GPU user scales
    a task from the suite file. Split objects are opaque to the harness: it only hands them back
    to `batches`, `evaluate` and `loss`. Batches may be tensors, tuples or dicts.

    Stages: "target" is the task people are scored on; "source" is what an adapt base model is
    pretrained on. Compress and the references start from a model trained on "target". A family
    (`members()`) adds one stage per member, "member:<name>", each fine-tuned from the source base.
    """

    name: ClassVar[str]
    quality: ClassVar[Quality]
    params: ClassVar[dict[str, Param]] = {}
    defaults: ClassVar[dict[str, Any]] = {}  # untyped form of `params`
    budget_scope: ClassVar[str] = "all parameters"  # what `in_budget` keeps, in words (goes into records)
    description: ClassVar[str] = ""
    preload: ClassVar[tuple[str, ...]] = ()  # as Method.preload

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _derive_defaults(cls)

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = check_all(type(self), "task", options)

    def fingerprint(self) -> str:
        """Identifies the data this task reads (file hashes, generator version); goes into cache keys."""
        return ""

    def make_model(self, seed: int) -> nn.Module:
        """A freshly initialised model (what `train` methods start from)."""
        raise NotImplementedError

    def pretrained(self, stage: str, seed: int) -> nn.Module | None:
        """A ready base model for a stage (a pretrained checkpoint), or None to have the harness
        train one from `make_model` with the "pretrain" recipe (and cache it)."""
        return None

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        """{"train", "val", "test"} split objects for a stage ("target", "source", "member:<name>")."""
        raise NotImplementedError

    def recipe(self, purpose: str) -> Recipe:
        """Training recipe for "pretrain" (from scratch), "finetune" (adapt, family members) or "recover"."""
        return Recipe()

    def batches(self, split: Any, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """An endless stream of shuffled training batches from a split."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The training loss on one batch (a scalar tensor); the harness adds the method's extra_loss."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: Any) -> float:
        """The quality metric on a whole split, in `quality.unit`."""
        raise NotImplementedError

    def predictions(self, model: nn.Module, split: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(logits, labels) over a whole split, for classification tasks: calibration metrics (ECE,
        NLL) read them. None: not a classification task."""
        return None

    def features(self, model: nn.Module, split: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(penultimate features (n, d), labels (n,)) over a split, for representation metrics
        (coding rate, CKA). None: the task does not say which layer that is."""
        return None

    def model_inputs(self, batch: Any) -> Inputs:
        """What the model takes from a training batch (calibration uses it): by default the first
        element of a tuple batch; a dict batch minus a "labels" entry; else the batch itself."""
        if isinstance(batch, Mapping):
            return Inputs((), {k: v for k, v in batch.items() if k != "labels"})
        if isinstance(batch, (tuple, list)):
            return Inputs.of(batch[0])
        return Inputs.of(batch)

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple | Inputs:
        """Inputs for one forward call at this batch size (FLOPs, latency, memory)."""
        raise NotImplementedError

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        """A training batch at this batch size (training-step latency and memory)."""
        raise NotImplementedError

    def sequence_length(self, inputs: Inputs) -> int | None:
        """Tokens per sample behind a per-sample figure (None for non-sequence inputs)."""
        return None

    def in_budget(self, param_name: str) -> bool:
        """Whether a parameter (by its name in the model) counts toward budgets; say what is left
        out in `budget_scope`. Default: every parameter."""
        return True

    def members(self) -> list[str]:
        """Names of the fine-tuned members of this task's family (merge cells); empty: no family."""
        return []

    def member_view(self, merged: nn.Module, member: str, member_model: nn.Module) -> nn.Module:
        """The merged model as scored on one member (e.g. with that member's own head)."""
        return merged

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """A batch moved to `device`: tensors inside tensors, tuples, lists, dicts and Inputs."""
        return to_device(batch, device)


@dataclass
class MeasureContext:
    """What a Metric sees.

    model: the trained model (training form, for training-step figures); inference_model: what
    `Method.for_inference` returned (forward FLOPs, inference latency, memory); base_model: the
    model the method was applied to (frozen; the fresh init for `train` cells); applied_model:
    the method's model before training (a frozen copy, present when a metric `needs` it);
    members: the family's fine-tuned members (merge cells).
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
    base_model: nn.Module | None = None
    applied_model: nn.Module | None = None
    members: dict[str, nn.Module] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)  # the cell's target splits (train/val/test)
    extras: dict[str, Any] = field(default_factory=dict)

    def example_inputs(self, batch_size: int) -> Inputs:
        return Inputs.of(self.task.example_inputs(batch_size, self.device))


class Metric:
    """A measurement a suite can ask for by name (`measure = ["flops", ...]`).

    `needs`: extra inputs the harness must prepare, from {"applied_model"} (a copy before training)."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        """Measure on `ctx.device`; never train or change the models (deep-copy first)."""
        raise NotImplementedError


# ---- the solve kind: problems and the algorithms that solve them ---------------------------------
class Problem(Task):
    """A task of the `solve` kind: seeded problem instances and their scorer; there is no model.

    Some papers compare algorithms, not network layers (matrix completion, row sampling, feature
    selection). `instance(split, seed)` makes one instance per split: "val" tunes a solver's own
    settings, "test" is scored. `score` returns named Measurements, each with its direction; the
    one named `quality.name` is the headline. `size` is the knob solvers are compared at (rank,
    samples, features): a solve cell's budget. `progress` scores an iterate cheaply (traces)."""

    size: ClassVar[Knob]
    budget_scope: ClassVar[str] = "the problem's size knob (no parameters)"

    def __init__(self, **options: Any) -> None:
        self.options = check_all(type(self), "problem", options)
        self.check_options()

    def check_options(self) -> None:
        """Cross-field checks of the options (raise PluginError naming the values)."""

    def instance(self, split: str, seed: int) -> Instance:
        raise NotImplementedError

    def score(self, instance: Instance, solution: Any) -> dict[str, Measurement]:
        raise NotImplementedError

    def progress(self, instance: Instance, estimate: Any) -> dict[str, float]:
        """The headline (and any cheap figure) of an iterate, by name; {}: the problem has none."""
        return {}

    def size_range(self, instance: Instance) -> tuple[int, int]:
        """Smallest and largest size that makes sense for this instance."""
        raise NotImplementedError


class Solver(Method):
    """A Method of the `solve` kind: an algorithm for the Problem named `problem`.

    `solve` draws every random number from `generator` and may call `trace(iteration,
    seconds=..., round_seconds=..., estimate=...)` once per iteration, `seconds` its own
    cumulative time (a Stopwatch that leaves the trace calls out). `tune`: a small grid of its own
    settings the harness tries on the "val" instance, keeping the best headline (a setting the
    suite fixes is not tuned). `flops` declares FLOPs ({"round": ..., "total": ...}) where known.
    """

    kind: ClassVar[str] = "solve"
    knob: ClassVar[Knob | None] = Knob("size", low=1, help="the problem's size: rank, samples, features")
    problem: ClassVar[str]
    tune: ClassVar[dict[str, list[Any]]] = {}
    source: ClassVar[str] = ""  # the paper, for `list methods --verbose`

    def solve(self, data: Any, size: int, generator: torch.Generator, trace: Trace = no_trace) -> Solution:
        raise NotImplementedError

    def flops(self, data: Any, size: int) -> dict[str, float]:
        return {}

    def iterations(self) -> int | None:
        """How many iterations `solve` traces at most (the progress display); None: not known."""
        return None

    def check_size(self, size: Any, low: int, high: int) -> int:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not low <= size <= high:
            raise PluginError(f"solver {self.name!r}: size = {size!r} must be an int in [{low}, {high}]")
        return int(size)

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        raise PluginError(f"solver {self.name!r} solves problem instances (kind 'solve'); it has no model to apply to")
