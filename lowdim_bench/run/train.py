"""The harness's training loop: the task's loss and batches, the method's hooks, a recipe.

One loop for every method, so differences in results come from the methods, not from loops.
A non-finite loss stops training with NonFiniteLoss, which fails the cell with that reason.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..api import Method, Recipe, Task, trainable


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class TrainResult:
    steps: int
    final_loss: float | None
    seconds: float


def make_optimizer(model: nn.Module, method: Method | None, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The method's own optimizer if it has one, else AdamW over the trainable parameters."""
    if method is not None:
        opt = method.configure_optimizer(model, lr, weight_decay)
        if opt is not None:
            return opt
    params = trainable(model)
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def lr_factor(step: int, recipe: Recipe) -> float:
    warm = int(recipe.warmup_frac * recipe.steps)
    if step < warm:
        return (step + 1) / warm
    if recipe.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, recipe.steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train(model: nn.Module, task: Task, method: Method | None, split: Any, recipe: Recipe, seed: int,
          device: torch.device, progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    if recipe.steps <= 0:
        return TrainResult(0, None, 0.0)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, method, recipe.lr, recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, recipe))
    batches = task.batches(split, recipe.batch_size, gen)
    clipped = [p for group in opt.param_groups for p in group["params"]]  # once: per-step lookups cost
    model.train()
    start, loss_value = time.perf_counter(), None
    for step in range(recipe.steps):
        batch = task.to_device(next(batches), device)
        loss = task.loss(model, batch)
        extra = method.extra_loss(model) if method is not None else None
        if extra is not None:
            loss = loss + extra
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"loss became {loss_value} at step {step} of {recipe.steps}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip:
            nn.utils.clip_grad_norm_(clipped, recipe.grad_clip)
        opt.step()
        sched.step()
        if method is not None:
            method.on_step(model, step)
        if progress is not None and (step % max(1, recipe.log_every) == 0 or step == recipe.steps - 1):
            progress(step + 1, recipe.steps, loss_value)
    model.eval()
    return TrainResult(recipe.steps, loss_value, time.perf_counter() - start)
