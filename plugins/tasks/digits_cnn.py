"""digits-cnn: a small CNN on scikit-learn's 8x8 digits, for conv adapters (FLoRA, conv-LoRA, SVFit).

Data, split, stages and shift are digits-mlp's (imported from it, not copied): the fixed
stratified 60/20/20 split, "source" = the digits as shipped, "target" = the same digits
transposed. Inputs are (n, 1, 8, 8) images in [0, 1].

Model (names are what `target_modules` suffixes match):
  conv1  Conv2d(1, width, 3, padding 1), ReLU                        8x8
  conv2  Conv2d(width, 2 width, 3, padding 1, groups), ReLU          8x8, then MaxPool 2 -> 4x4
  conv3  Conv2d(2 width, 2 width, 3, padding 1, groups = 2 width)    depthwise, ReLU (option)
  global average pool -> head Linear(2 width, 10)
`groups` (default 2) and `depthwise` (default true) make the default model exercise a grouped
and a depthwise conv, the cases conv adapters get wrong most often.

Why global average pooling: transposing the input is then exactly undone by transposing every
kernel (max-pooling 2x2 and the average commute with a transpose), so the target is reachable by
changing conv weights alone, a shift a conv adapter can in principle learn in full.

Measured (default options, harness training loop, 1 thread, seeds 0-2; scripts/check_svfit_flora.py
and tests/test_task_digits_cnn.py): pretraining 300 steps takes 2.2-3.8 s of CPU; the base scores
0.97-0.98 on source test and 0.08-0.10 on target test; full fine-tuning (finetune recipe, best
of lr 3e-3/1e-2/3e-2) reaches 0.975-0.986, LoRA r=1 (1,107 trainable of 10,890) 0.939-0.958.
Width 16 was cheaper but its base reached only 0.91-0.96 on source; pooling before conv2 halved
the CPU time but lowered source accuracy to 0.95-0.975.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from lowdim_bench.api import Param, PluginError, Task
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench_builtin.tasks.digits_mlp import (SHIFTS, SPLIT_SEED, DigitsSplit, DigitsTask, _load_digits,
                                                 recipe_params)


class DigitsCNN(nn.Module):
    """conv1 -> conv2 (grouped) -> pool -> conv3 (depthwise, optional) -> global average -> head."""

    def __init__(self, width: int, groups: int, depthwise: bool, n_classes: int = 10) -> None:
        super().__init__()
        wide = 2 * width
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, wide, 3, padding=1, groups=groups)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(wide, wide, 3, padding=1, groups=wide) if depthwise else None
        self.head = nn.Linear(wide, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = self.pool(torch.relu(self.conv2(h)))
        if self.conv3 is not None:
            h = torch.relu(self.conv3(h))
        return self.head(h.mean(dim=(2, 3)))


class DigitsCnnTask(DigitsTask):
    name = "digits-cnn"
    params = {
        "width": Param(32, int, low=1, high=4096, help="channels of the first conv (the grouped conv doubles them)"),
        "groups": Param(2, int, low=1, help="groups of the second conv (must divide width)"),
        "depthwise": Param(True, bool, help="add the depthwise conv layer"),
        "shift": Param("transpose", choices=SHIFTS, help="the target stage's change from the source digits"),
        **recipe_params(steps=300, lr=1e-2, batch_size=64, finetune_steps=200, finetune_lr=1e-2),
    }
    description = (
        "Small CNN (conv 1->w, grouped conv w->2w, max-pool, depthwise conv, global average, Linear head) on "
        "scikit-learn's 8x8 digits; digits-mlp's split and stages (target: transposed digits). Quality: test accuracy."
    )

    def __init__(self, **options: Any) -> None:
        Task.__init__(self, **options)  # DigitsTask's checks are for the MLP's options
        o = self.options
        if o["shift"] not in SHIFTS:
            raise PluginError(f"task {self.name!r}: unknown shift {o['shift']!r}; known: {list(SHIFTS)}")
        width, groups = o["width"], o["groups"]
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise PluginError(f"task {self.name!r}: option 'width' must be an integer >= 1, got {width!r}")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or width % groups:
            raise PluginError(f"task {self.name!r}: option 'groups' must be an integer >= 1 dividing width {width}, "
                              f"got {groups!r}")
        if not isinstance(o["depthwise"], bool):
            raise PluginError(f"task {self.name!r}: option 'depthwise' must be true or false, got {o['depthwise']!r}")
        self._cache: dict[str, dict[str, DigitsSplit]] = {}

    def fingerprint(self) -> str:
        x, y = _load_digits()
        h = hashlib.sha256()
        h.update(f"digits-cnn/v1 shift={self.options['shift']} split_seed={SPLIT_SEED}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
        h.update(np.ascontiguousarray(y).tobytes())
        return h.hexdigest()

    def make_model(self, seed: int) -> nn.Module:
        o = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return DigitsCNN(int(o["width"]), int(o["groups"]), bool(o["depthwise"]))

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        """digits-mlp's splits with each row viewed as a 1x8x8 image."""
        flat = super().splits(stage, seed)
        return {part: DigitsSplit(s.x.view(-1, 1, 8, 8), s.y) for part, s in flat.items()}

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(0)
        return (torch.rand(batch_size, 1, 8, 8, generator=g).to(device),)

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch_size, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (batch_size,), generator=g)
        return x.to(device), y.to(device)


@hookimpl
def register_tasks(register) -> None:
    register(DigitsCnnTask)
