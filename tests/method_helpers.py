"""Builders the method tests share: an ApplyContext without a task, and a small MLP."""
import torch
from torch import nn

from lowdim_bench.api import ApplyContext


def ctx(seed: int = 0) -> ApplyContext:
    return ApplyContext(seed=seed, device=torch.device("cpu"), task=None)  # type: ignore[arg-type]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 7))
