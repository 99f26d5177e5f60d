"""One cell, start to finish, inside its own worker process.

task.splits -> start model (run/models.py) -> budget search + method.apply -> train (with an
optional learning-rate grid chosen on validation) -> quality on test -> save artefacts -> the
suite's metrics. Everything goes back to the parent as typed events through `send`:
Progress, RecordsReady, then CellDone or CellFailed.
"""
from __future__ import annotations

import copy
import datetime as dt
import gc
import math
import os
import signal
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from .. import api
from ..core import events as ev
from ..core import records
from ..core.cells import Cell
from ..core.environment import collect
from ..measure.latency import set_threads
from ..measure.params import count_params
from ..registry import Registry
from . import artefacts, lifetime, models, solve, warm
from . import budget as budget_mod
from .train import NonFiniteLoss, make_optimizer, train

Send = Callable[[ev.Event], None]
PURPOSE = {"train": "pretrain", "adapt": "finetune", "compress": "recover", "head": "finetune", "merge": "finetune"}


class CellRun:
    """State of one cell while it runs; builds the records it sends."""

    def __init__(self, cell: Cell, run_id: str, send: Send, registry: Registry, device: str | None = None,
                 run_dir: str | Path | None = None) -> None:
        self.cell, self.send, self.registry = cell, send, registry
        self.run_dir = Path(run_dir) if run_dir else None
        self.device = torch.device(device or cell.device)
        prov = registry.method(cell.method)
        self.task_version = registry.task(cell.task).code_version
        env = collect(str(self.device))
        env["threads"] = torch.get_num_threads()
        self.base = records.origin(cell, run_id, env, prov.plugin.dist or prov.plugin.name, prov.plugin.version,
                                   str(self.device))
        self.base["started_at"] = dt.datetime.now().isoformat(timespec="seconds")
        self.config: dict[str, Any] = {"cell": cell.config(), "opt_einsum": env["opt_einsum"]}

    def emit(self, measurements: list[api.Measurement]) -> None:
        self.send(ev.RecordsReady(self.cell.key, [records.ok(self.base, m, self.config) for m in measurements]))

    def progress(self, stage: str) -> Callable[[int, int, float], None]:
        return lambda step, steps, loss: self.send(ev.Progress(self.cell.key, stage, step, steps, loss))

    def run(self) -> None:
        cell = self.cell
        models.seed_everything(cell.seed)
        if cell.kind == "solve":  # problems and solvers: no model, no training (run/solve.py)
            return solve.run(self)
        task = self.registry.task(cell.task).cls(**cell.task_options)
        method = self.registry.method(cell.method).cls(**cell.hparams)
        if cell.kind not in method.supported_kinds():
            raise api.PluginError(f"method {cell.method!r} does not run as {cell.kind!r}")
        if cell.kind == "merge" and not task.members():
            raise api.PluginError(f"task {cell.task!r} has no family of fine-tuned members (Task.members()), "
                                  "so it cannot run merge cells")
        self.config["quality"] = {"name": task.quality.name, "unit": task.quality.unit}
        start, how = models.start_model(task, cell, self.task_version, self.device, self.progress)
        self.config["base_model"] = how
        family = models.members(task, start, cell.seed, self.task_version, self.device, self.progress) \
            if cell.kind == "merge" else {}
        splits = task.splits("target", cell.seed) if cell.kind != "merge" else {}
        if cell.kind == "adapt":  # the base's own score on the target: what adapting starts from
            q = task.quality
            self.emit([api.Measurement("quality_before", task.evaluate(start, splits["test"]), q.unit,
                                       higher_is_better=q.higher_is_better)])
        model = self.apply(task, method, start, family, splits)
        applied = copy.deepcopy(model) if self._needs("applied_model") else None
        model, val = self.fit(task, method, model, splits)
        self.score(task, model, val, splits, family)
        if "model" in cell.save and self.run_dir is not None:
            nbytes = artefacts.save_trained(self.run_dir, cell.key, model)
            self.emit([api.Measurement("artefact_bytes", nbytes, "B", "model")])
        self.measure(task, method, model, start, applied, family, splits)

    def apply(self, task: api.Task, method: api.Method, start: torch.nn.Module, family: dict,
              splits: dict) -> torch.nn.Module:
        cell = self.cell
        scope = task.in_budget
        dense = count_params(start, scope)
        denominator = dense.total if cell.kind == "adapt" else dense.stored
        before = [models.checksum(m) for m in (start, *family.values())]
        calib = splits.get("train")
        ctx = api.ApplyContext(seed=cell.seed, device=self.device, task=task, kind=cell.kind, members=family,
                               generator=torch.Generator().manual_seed(cell.seed), recipe=self.recipe(task, method),
                               calibration=lambda: models.calibration(task, calib, cell.seed, self.device))
        sized = budget_mod.apply_sized(method, start, cell.kind, cell.budget, cell.knob, max(1, denominator), ctx,
                                       include=scope)
        if [models.checksum(m) for m in (start, *family.values())] != before:
            raise api.PluginError(f"method {cell.method!r} mutated the base model (or a member) it was given")
        self.base.update(budget_reached=sized.fraction, knob=sized.knob, over_budget=sized.over_budget,
                         budget_scope=task.budget_scope)
        self.config["knob"] = {"name": method.knob.name if method.knob else None, "value": sized.knob,
                               "over_budget": sized.over_budget}
        self.config["hparams"] = method.hparams
        self.config["budget"] = {"scope": task.budget_scope, "dense_in_scope": denominator}
        self.emit([api.Measurement("budget_reached", sized.fraction, "fraction")])
        if sized.mismatch is not None:  # reached - asked: the budget match's error, signed
            self.config["budget"]["mismatch"] = sized.mismatch
            self.emit([api.Measurement("budget_mismatch", sized.mismatch, "fraction")])
        return sized.model.to(self.device)

    def score(self, task: api.Task, model: torch.nn.Module, val: float | None, splits: dict, family: dict) -> None:
        hib, unit = task.quality.higher_is_better, task.quality.unit
        if self.cell.kind == "merge":
            scores = {}
            for name, member in family.items():
                test = task.splits(f"member:{name}", self.cell.seed)["test"]
                scores[name] = task.evaluate(task.member_view(model, name, member), test)
                alone = task.evaluate(member, test)
                self.emit([api.Measurement("quality_member", scores[name], unit, name, higher_is_better=hib),
                           api.Measurement("quality_individual", alone, unit, name, higher_is_better=hib)])
            self.emit([api.Measurement("quality", sum(scores.values()) / len(scores), unit, higher_is_better=hib)])
            return
        self.emit([api.Measurement("quality", task.evaluate(model, splits["test"]), unit, higher_is_better=hib)])
        if val is not None:
            self.emit([api.Measurement("quality_val", val, unit, higher_is_better=hib)])

    def measure(self, task: api.Task, method: api.Method, model: torch.nn.Module, start: torch.nn.Module,
                applied: torch.nn.Module | None, family: dict, splits: dict) -> None:
        recipe = self.recipe(task, method)
        deployed = method.for_inference(copy.deepcopy(model))
        dense = count_params(start)
        start.eval().requires_grad_(False)  # the base is done with: what metrics see is frozen
        mctx = api.MeasureContext(
            task=task, method=method, model=model, inference_model=deployed, kind=self.cell.kind, device=self.device,
            protocol=self.cell.protocol, make_optimizer=lambda m: make_optimizer(m, method, recipe.lr, recipe.weight_decay),
            dense_params=dense.total, base_model=start, applied_model=applied, members=family, splits=splits,
            extras={"config": self.config})
        for name in self.cell.measure:
            self.emit(self.registry.metric(name).cls().measure(mctx))

    def _needs(self, what: str) -> bool:
        return any(what in self.registry.metric(m).cls.needs for m in self.cell.measure)

    def recipe(self, task: api.Task, method: api.Method) -> api.Recipe:
        cell = self.cell
        recipe = task.recipe(PURPOSE.get(cell.kind, "finetune"))
        recipe = recipe.replace(**cell.recipe) if cell.recipe else recipe
        if cell.kind == "merge" or (cell.kind == "compress" and not method.hparams.get("recover", False)):
            recipe = recipe.replace(steps=0)  # one-shot: merges and compression without recovery do not train
        return recipe

    def fit(self, task: api.Task, method: api.Method, model: torch.nn.Module,
            splits: dict[str, Any]) -> tuple[torch.nn.Module, float | None]:
        """Train once per learning rate of the grid; keep the best on validation.

        Why the extras: a choice at the edge of a grid says the best rate may lie beyond it, so the
        grid is extended once by its own ratio in that direction, and a choice still at the new
        edge is flagged (`lr_at_edge`); a rate whose loss goes non-finite is a failed candidate,
        not a failed cell (only when every rate fails does the cell fail)."""
        cell = self.cell
        recipe = self.recipe(task, method)
        if recipe.steps <= 0 or not any(p.requires_grad for p in model.parameters()):
            model.eval()
            return model, None
        grid = sorted(set(cell.lr_grid)) or [recipe.lr]
        sign = 1 if task.quality.higher_is_better else -1
        tried: dict[float, float | str] = {}
        best: list[Any] = []  # [val, lr, model, result] of the best candidate so far

        def attempt(lr: float) -> None:
            candidate = copy.deepcopy(model) if len(grid) > 1 else model
            models.seed_everything(cell.seed)
            try:
                result = train(candidate, task, method, splits["train"], recipe.replace(lr=lr), cell.seed,
                               self.device, self.progress(f"train lr={lr:g}"))
            except NonFiniteLoss as exc:
                if len(grid) == 1:
                    raise
                tried[lr] = f"non-finite loss: {exc}"
                return
            val = task.evaluate(candidate, splits["val"])
            if not math.isfinite(val):
                tried[lr] = f"non-finite validation score {val}"
                return
            tried[lr] = val
            if not best or sign * val > sign * best[0]:
                best[:] = [val, lr, candidate, result]

        for lr in grid:
            attempt(lr)
        extended = None
        if len(grid) > 1 and best and best[1] in (grid[0], grid[-1]):
            low = best[1] == grid[0]
            ratio = grid[1] / grid[0] if low else grid[-1] / grid[-2]
            extended = best[1] / ratio if low else best[1] * ratio
            attempt(extended)
        if not best:
            raise NonFiniteLoss("every learning rate of the grid failed: "
                                + "; ".join(f"lr={lr:g}: {why}" for lr, why in tried.items()))
        val, lr, model, result = best
        at_edge = extended is not None and lr == extended
        failed = [k for k, v in tried.items() if isinstance(v, str)]
        self.config["lr"] = {"grid": grid, "extended": extended, "selected": lr, "at_edge": at_edge,
                             "tried": {f"{k:g}": v for k, v in tried.items()}}
        out = [api.Measurement("train_seconds", result.seconds, "s", higher_is_better=False),
               api.Measurement("lr_selected", lr, "lr")]
        if len(grid) > 1:
            out += [api.Measurement("lr_at_edge", float(at_edge), "flag"),
                    api.Measurement("lr_failed", float(len(failed)), "rates")]
        self.emit(out)
        if result.final_loss is not None:
            self.emit([api.Measurement("train_loss_final", result.final_loss, "nats", higher_is_better=False)])
        return model, val


def classify(exc: BaseException) -> str:
    """A short reason for a failed cell."""
    if isinstance(exc, NonFiniteLoss):
        return f"non-finite loss: {exc}"
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or any(s in text for s in ("out of memory", "can't allocate memory",
                                                                "cannot allocate memory")):
        return f"out of memory: {type(exc).__name__}: {str(exc)[:300]}"
    return f"{type(exc).__name__}: {str(exc)[:500]}"


REPORT_FAILED_EXIT = 70  # the worker could not even report its error (out of memory while reporting)


def execute(cell: Cell, run_id: str, send: Send, registry: Registry | None = None, device: str | None = None,
            run_dir: str | Path | None = None) -> None:
    """Run a cell, reporting through `send`; never raises.

    On an error the reason and traceback are formatted first, then the failed frames are let go
    (they may hold the tensors that exhausted memory) before the report is sent, so an out of
    memory in `apply` is reported as out of memory, not as a worker that died."""
    failure: tuple[str, str] | None = None
    try:
        registry = registry or Registry.load()
        CellRun(cell, run_id, send, registry, device, run_dir).run()
    except BaseException as exc:  # a plugin may raise anything, even SystemExit
        traceback.clear_frames(exc.__traceback__)  # the failed frames' tensors go before we format anything
        gc.collect()
        failure = (classify(exc), records.cap_text(traceback.format_exc()))
    if failure is None:
        send(ev.CellDone(cell.key))
        return
    gc.collect()
    send(ev.CellFailed(cell.key, cell.label, *failure))


def process_main(cell_dict: dict, run_id: str, run_dir: str, queue: Any, threads: int, device: str,
                 parent: int) -> None:
    """Entry point of a worker process: a clean interpreter per cell, spawned or forked from a warm
    server (run/warm.py) that has run no cell. `parent` is the run's pid (the executor's process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it cancels, we are killed
    lifetime.die_with_parent(parent, via=warm.server_pid())
    cell = Cell.from_dict(cell_dict)
    # report at once: this starts the queue's feeder thread while memory is still there to start it
    queue.put(ev.CellStarted(cell.key, cell.label, f"pid {os.getpid()}"))
    set_threads(threads or None)
    try:
        problem = warm.child_problem(device)
        if problem:
            queue.put(ev.CellFailed(cell.key, cell.label, problem))
        else:
            execute(cell, run_id, queue.put, registry=warm.preloaded_registry(), device=device, run_dir=run_dir)
        queue.close()
        queue.join_thread()
    except BaseException:  # not even the report could be sent: say so through the exit code
        os._exit(REPORT_FAILED_EXIT)
