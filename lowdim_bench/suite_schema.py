"""The typed schema of a suite file and of the run overrides (pydantic v2, strict).

Why pydantic rather than msgspec: both validate fast enough for a file of a few hundred lines;
pydantic's strict mode gives per-field range constraints (gt/le/allow_inf_nan) and error
locations we can turn into "file:line [table] field" messages, and the same constraint types
check plugin hyper-parameters (lowdim_bench/hparams.py). Values are checked here by type and
range; names (methods, tasks, metrics, analyses) are checked against the registry in suite.py.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]+$", min_length=1, max_length=64)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Knob = Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Seconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600, allow_inf_nan=False)]
BatchSize = Annotated[int, Field(ge=1, le=1 << 20)]


def _unique(values: list) -> list:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{v!r} is listed twice")
        seen.add(v)
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RecipeModel(_Strict):
    """Fields of api.Recipe, each with its range; a suite may set any of them."""

    steps: Annotated[int, Field(ge=0, le=10**9)] | None = None
    batch_size: BatchSize | None = None
    lr: PositiveFloat | None = None
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    warmup_frac: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] | None = None
    schedule: Literal["cosine", "constant"] | None = None
    grad_clip: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None  # 0: no clipping
    log_every: Annotated[int, Field(ge=1)] | None = None

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ProtocolModel(_Strict):
    batch_sizes: Annotated[list[BatchSize], Field(min_length=1, max_length=64)] = [1, 64]
    warmup: Annotated[int, Field(ge=0, le=100_000)] = 5
    repeats: Annotated[int, Field(ge=1, le=1_000_000)] = 30
    max_seconds: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 2.0  # 0: no cap
    threads: Annotated[int, Field(ge=0, le=4096)] = 1  # per worker; 0: every usable core / jobs
    memory_batch_size: BatchSize = 64
    train_batch_size: BatchSize = 64
    interleave: bool = True  # after a task's cells finish, time them all A B A B in one process
    interleave_seeds: Annotated[int, Field(ge=0, le=1000)] = 0  # seeds per entry timed there; 0: all
    cell_inference_latency: bool = True  # false: inference is timed in the interleaved pass only
    compile: bool = False  # also time torch.compile'd inference, compile time kept apart
    roofline: bool = True  # latency records carry their roofline bound

    _unique_sizes = field_validator("batch_sizes")(_unique)

    @model_validator(mode="after")
    def _inference_timed_somewhere(self) -> "ProtocolModel":
        if not self.cell_inference_latency and not self.interleave:
            raise ValueError("cell_inference_latency = false leaves inference latency to the interleaved pass: "
                             "it needs interleave = true")
        return self


class TaskEntry(BaseModel):
    """`[tasks.NAME]`: the task's options (checked against its typed params later), `task` to run a
    registered task under another name (two widths of one task in one suite), and a recipe."""

    model_config = ConfigDict(extra="allow", strict=True)
    task: Name | None = None
    recipe: RecipeModel = RecipeModel()


class MethodEntry(BaseModel):
    """`[methods.NAME]`: harness fields below; any other key is a hyper-parameter of the method."""

    model_config = ConfigDict(extra="allow", strict=True)
    method: Name | None = None
    budgets: Annotated[list[Fraction], Field(min_length=1, max_length=1000)] | None = None
    knobs: Annotated[list[Knob], Field(min_length=1, max_length=1000)] | None = None
    kinds: Annotated[list[Name], Field(min_length=1)] | None = None
    recipe: RecipeModel = RecipeModel()
    lr_grid: Annotated[list[PositiveFloat], Field(min_length=1, max_length=100)] | None = None
    timeout_s: Seconds | None = None
    tasks: Annotated[list[Name], Field(min_length=1)] | None = None

    _unique_lists = field_validator("budgets", "knobs", "kinds", "lr_grid", "tasks")(
        lambda v: v if v is None else _unique(v))


class TuningModel(_Strict):
    lr: Annotated[list[PositiveFloat], Field(min_length=1, max_length=100)] | None = None

    _unique_lr = field_validator("lr")(lambda v: v if v is None else _unique(v))


class SuiteModel(BaseModel):
    """The top level. Keys not listed here must be tables owned by an analysis (`[[claims]]`)."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: Name
    version: Annotated[str, Field(max_length=64)] | int = "1"
    description: Annotated[str, Field(max_length=10_000)] = ""
    tasks: dict[Name, TaskEntry]
    methods: dict[Name, MethodEntry]
    budgets: Annotated[list[Fraction], Field(min_length=1, max_length=1000)] = [1.0]
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=10_000)] = [0]
    measure: Annotated[list[Name], Field(max_length=100)] = ["params", "flops", "latency", "memory"]
    protocol: ProtocolModel = ProtocolModel()
    tuning: TuningModel = TuningModel()
    timeout_s: Seconds = 600.0
    recipe: RecipeModel = RecipeModel()
    reference: Name | None = None
    analyses: Annotated[list[Name], Field(max_length=100)] = []
    save: list[Literal["model"]] = []

    _unique_lists = field_validator("budgets", "seeds", "measure", "analyses", "save")(_unique)

    @field_validator("tasks", "methods")
    @classmethod
    def _not_empty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("needs at least one entry")
        return v


HARNESS_KEYS = set(SuiteModel.model_fields)
METHOD_KEYS = set(MethodEntry.model_fields)


def first_error(exc: ValidationError) -> tuple[tuple, str]:
    """(location, message) of the first problem pydantic found, the message in plain words."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    value = err.get("input")
    if err["type"] not in ("missing", "extra_forbidden") and not isinstance(value, (dict, list)):
        msg = f"{msg}, got {value!r}"[:300]
    elif isinstance(value, list):
        msg = f"{msg}, got {str(value)[:200]}"
    return loc, msg
