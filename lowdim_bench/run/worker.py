"""One cell, start to finish, inside its own worker process.

task.splits -> base model (cached) -> budget search + method.apply -> train (with an optional
learning-rate grid chosen on validation) -> quality on test -> the suite's metrics. Messages go
back to the parent through `send`: ("progress", ...), ("records", ...), ("done",) or
("error", reason, traceback).
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import random
import traceback
from typing import Any, Callable

import torch

from .. import api
from ..measure.params import count_params
from ..registry import Registry
from . import budget as budget_mod
from . import cache, environment
from .cells import Cell
from .train import NonFiniteLoss, make_optimizer, train

Send = Callable[[tuple], None]
PURPOSE = {"train": "pretrain", "adapt": "finetune", "compress": "recover", "head": "finetune"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


class CellRun:
    """State of one cell while it runs; builds the records it sends."""

    def __init__(self, cell: Cell, run_id: str, send: Send, registry: Registry, device: str | None = None) -> None:
        self.cell, self.send, self.registry = cell, send, registry
        self.device = torch.device(device or cell.device)
        prov = registry.method(cell.method)
        self.method_plugin = prov.plugin
        self.env = environment.collect(str(self.device))
        self.env["threads"] = torch.get_num_threads()
        self.base = {
            "run_id": run_id, "suite": cell.suite, "suite_version": cell.suite_version, "task": cell.task,
            "method": cell.shown_name, "kind": cell.kind, "plugin": prov.plugin.dist or prov.plugin.name,
            "plugin_version": prov.plugin.version, "cell_key": cell.key, "budget": cell.budget,
            "knob": cell.knob, "seed": cell.seed, "device": str(self.device), "status": "ok",
            "started_at": dt.datetime.now().isoformat(timespec="seconds"),
            "torch_version": self.env["torch_version"], "python_version": self.env["python_version"],
            "device_name": self.env["device_name"], "threads": self.env["threads"], "git_rev": self.env["git_rev"],
        }
        self.config: dict[str, Any] = {"cell": cell.config(), "opt_einsum": self.env["opt_einsum"]}

    def emit(self, measurements: list[api.Measurement], higher_is_better: bool | None = False) -> None:
        recs = [{**self.base, "metric": m.metric, "value": float(m.value), "unit": m.unit, "phase": m.phase,
                 "batch_size": m.batch_size, "higher_is_better": higher_is_better,
                 "config": json.dumps(self.config, default=str, sort_keys=True)} for m in measurements]
        self.send(("records", recs))

    def progress(self, stage: str) -> Callable[[int, int, float], None]:
        return lambda step, steps, loss: self.send(("progress", stage, step, steps, loss))

    def base_model(self, task: api.Task, stage: str) -> torch.nn.Module:
        cell = self.cell
        version = self.registry.task(cell.task).code_version

        def build() -> torch.nn.Module:
            seed_everything(cell.seed)
            model = task.make_model(cell.seed).to(self.device)
            splits = task.splits(stage, cell.seed)
            train(model, task, None, splits["train"], task.recipe("pretrain"), cell.seed, self.device,
                  self.progress(f"base[{stage}]"))
            return model.cpu()

        model, hit = cache.cached_model(task, stage, cell.seed, version, build)
        self.config["base_model"] = {"stage": stage, "cached": hit}
        return model.to(self.device).eval()

    def run(self) -> None:
        cell = self.cell
        seed_everything(cell.seed)
        task = self.registry.task(cell.task).cls(**cell.task_options)
        method = self.registry.method(cell.method).cls(**cell.hparams)
        if cell.kind not in method.supported_kinds():
            raise api.PluginError(f"method {cell.method!r} does not run as {cell.kind!r}")
        if cell.kind == "merge":
            raise api.PluginError("merge cells need several fine-tuned models; no task provides them yet")
        self.config["quality"] = {"name": task.quality.name, "unit": task.quality.unit}
        splits = task.splits("target", cell.seed)

        if cell.kind == "train":
            seed_everything(cell.seed)
            start = task.make_model(cell.seed).to(self.device)
        else:
            start = self.base_model(task, base_stage(cell.kind))
        dense = count_params(start)
        before = _checksum(start)
        gen = torch.Generator().manual_seed(cell.seed)
        ctx = api.ApplyContext(seed=cell.seed, device=self.device, task=task, generator=gen,
                               calibration=lambda: _calibration(task, splits["train"], cell.seed, self.device),
                               kind=cell.kind, recipe=self.recipe(task, method))
        # adapt budgets count trainable parameters against the dense model's; others stored ones
        denominator = dense.total if cell.kind == "adapt" else dense.stored
        sized = budget_mod.apply_sized(method, start, cell.kind, cell.budget, cell.knob, denominator, ctx)
        if _checksum(start) != before:
            raise api.PluginError(f"method {cell.method!r} mutated the base model it was given")
        model = sized.model.to(self.device)
        self.base["budget_reached"] = sized.fraction
        self.base["knob"] = sized.knob
        self.config["knob"] = {"name": method.knob.name if method.knob else None, "value": sized.knob,
                               "over_budget": sized.over_budget}
        self.config["hparams"] = method.hparams

        model, val = self.fit(task, method, model, splits)
        test = task.evaluate(model, splits["test"])
        hib = task.quality.higher_is_better
        self.emit([api.Measurement("quality", test, task.quality.unit)], hib)
        if val is not None:
            self.emit([api.Measurement("quality_val", val, task.quality.unit)], hib)
        self.emit([api.Measurement("budget_reached", sized.fraction, "fraction")], None)

        recipe = self.recipe(task, method)
        deployed = method.for_inference(copy.deepcopy(model))
        mctx = api.MeasureContext(
            task=task, method=method, model=model, inference_model=deployed, kind=cell.kind, device=self.device,
            protocol=cell.protocol, make_optimizer=lambda m: make_optimizer(m, method, recipe.lr, recipe.weight_decay),
            dense_params=dense.total, splits=splits, extras={"config": self.config})
        for name in cell.measure:
            metric = self.registry.metric(name).cls()
            self.emit(metric.measure(mctx))

    def recipe(self, task: api.Task, method: api.Method) -> api.Recipe:
        cell = self.cell
        recipe = task.recipe(PURPOSE.get(cell.kind, "finetune"))
        recipe = recipe.replace(**cell.recipe) if cell.recipe else recipe
        if cell.kind == "compress" and not method.hparams.get("recover", False):
            recipe = recipe.replace(steps=0)  # one-shot: no recovery fine-tune unless the method asks
        return recipe

    def fit(self, task: api.Task, method: api.Method, model: torch.nn.Module,
            splits: dict[str, Any]) -> tuple[torch.nn.Module, float | None]:
        """Train once per learning rate of the grid; keep the best on validation."""
        cell = self.cell
        recipe = self.recipe(task, method)
        if recipe.steps <= 0:
            model.eval()
            return model, None
        grid = cell.lr_grid or [recipe.lr]
        best: tuple[float, float, torch.nn.Module, Any] | None = None
        sign = 1 if task.quality.higher_is_better else -1
        for lr in grid:
            candidate = copy.deepcopy(model) if len(grid) > 1 else model
            seed_everything(cell.seed)
            result = train(candidate, task, method, splits["train"], recipe.replace(lr=lr), cell.seed,
                           self.device, self.progress(f"train lr={lr:g}"))
            val = task.evaluate(candidate, splits["val"])
            if best is None or sign * val > sign * best[0]:
                best = (val, lr, candidate, result)
        val, lr, model, result = best
        self.config["lr"] = {"grid": grid, "selected": lr}
        self.emit([api.Measurement("train_seconds", result.seconds, "s"),
                   api.Measurement("lr_selected", lr, "lr")], None)
        if result.final_loss is not None:
            self.emit([api.Measurement("train_loss_final", result.final_loss, "nats")], None)
        return model, val


def base_stage(kind: str) -> str:
    """Which stage a cell's base model is trained on: adapt and head start from the source stage."""
    return "source" if kind in ("adapt", "head") else "target"


def _checksum(model: torch.nn.Module) -> tuple:
    with torch.no_grad():
        return tuple((n, float(t.double().sum()), t.requires_grad if isinstance(t, torch.nn.Parameter) else None)
                     for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_floating_point())


def _calibration(task: api.Task, split: Any, seed: int, device: torch.device, n_batches: int = 8):
    """Inputs from the training split, for methods that calibrate (AFM, activation-aware SVD)."""
    gen = torch.Generator().manual_seed(seed + 1)
    it = task.batches(split, 64, gen)
    for _ in range(n_batches):
        yield task.model_inputs(task.to_device(next(it), device))


def classify(exc: BaseException) -> str:
    """A short reason for a failed cell."""
    if isinstance(exc, NonFiniteLoss):
        return f"non-finite loss: {exc}"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {type(exc).__name__}: {str(exc)[:300]}"
    return f"{type(exc).__name__}: {str(exc)[:500]}"


def execute(cell: Cell, run_id: str, send: Send, registry: Registry | None = None, device: str | None = None) -> None:
    """Run a cell, reporting through `send`; never raises."""
    try:
        registry = registry or Registry.load()
        CellRun(cell, run_id, send, registry, device).run()
        send(("done",))
    except BaseException as exc:  # a plugin may raise anything, even SystemExit
        send(("error", classify(exc), traceback.format_exc()))


def process_main(cell_dict: dict, key: str, run_id: str, queue: Any, threads: int, device: str) -> None:
    """Entry point of a worker process (spawned: a clean interpreter per cell)."""
    from ..measure.latency import set_threads

    set_threads(threads or None)
    execute(Cell.from_dict(cell_dict), run_id, lambda msg: queue.put((key,) + msg), device=device)
