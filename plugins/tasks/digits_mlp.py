"""digits-mlp: an MLP on scikit-learn's 8x8 digits, with a shifted stage for adapt methods.

The data ships with scikit-learn (no download). Pixels are scaled to [0, 1]; train/val/test
is a stratified 60/20/20 split drawn once with a constant seed, so a run's seed only changes
initialisation and batch order.

Stages share that split and differ by a fixed input shift:
- "source": the digits as scikit-learn ships them (what an adapt base is pretrained on);
- "target": the same digits transposed (each 8x8 image mirrored across its main diagonal),
  what everyone is scored on.

Why transposition (measured on 2 CPU cores, 10 seeds, default options; a base pretrained on
source, then the finetune recipe on target): the base scores 0.10-0.125 on target test (chance),
full fine-tuning recovers 0.96-0.97, and LoRA on the two hidden Linears (head frozen, lr 1e-2)
reaches 0.85 at rank 2, 0.93 at rank 4 and 0.95 at rank 8 (0.62 / 0.71 / 0.82 at lr 3e-3, hence
the finetune lr of 1e-2). Rejected: left-right
flip (base still 0.41 on target); intensity inversion (base 0.006, full fine-tuning only 0.82,
LoRA under 0.3); a label permutation (lives almost entirely in the 10-way head, so it tests
the head, not the adapter). The `shift`
option keeps these for experiments.

Transposition leaves the base at chance, so "adapting" there is re-learning the input layer; and a
pixel permutation rotates a weight's singular vectors, which methods that only rescale them
(SVFit) cannot follow. Targets where the base keeps a sensible score (seed 0, 200 fine-tuning
steps, best of three rates on validation; base on target test, then full fine-tuning / LoRA r=1 /
SVFit at full rank): "translate" (one pixel right) 0.45, then 0.98 / 0.94 / 0.86; "blur" (3x3 box)
0.70, then 0.97 / 0.91 / 0.92; "dim" (bottom half at 30%) 0.57, then 0.97 / 0.96 / 0.96.
suites/paper-checks.toml uses "dim" for its adapt checks: a change of input statistics the
pretrained features still fit, which re-weighting them (SVFit) can express.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import Param, PluginError, Quality, Recipe, Task
from lowdim_bench.hookspecs import hookimpl

from ._features import head_inputs

SHIFTS = ("transpose", "flip", "invert", "permute", "translate", "blur", "dim", "none")
SPLIT_SEED = 20240501  # constant: the split never depends on the run's seed
FRACTIONS = (0.6, 0.2, 0.2)
LABEL_PERMUTATION = (3, 8, 0, 9, 6, 1, 7, 4, 2, 5)  # fixed derangement for shift="permute"


@dataclass
class DigitsSplit:
    """Inputs (n, 64) float32 in [0, 1] and labels (n,) int64, on the CPU."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


class DigitsMLP(nn.Module):
    """64 -> hidden (x depth, ReLU) -> 10. The classifier is `head` so methods can skip it."""

    def __init__(self, hidden: int, depth: int, n_in: int = 64, n_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def digits_file() -> Path:
    """scikit-learn's bundled copy of the UCI digits (what `load_digits` reads), found without
    importing scikit-learn: its import costs 2 s in every warm cell server (run/warm.py)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise PluginError("digits tasks need scikit-learn's bundled data set: pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Pixels / 16 as float32 and labels; read-only because the arrays are shared. The same rows as
    sklearn.datasets.load_digits (a test checks)."""
    with gzip.open(digits_file(), "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    x = (data[:, :-1] / 16.0).astype(np.float32)
    y = data[:, -1].astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices, fixed by SPLIT_SEED and sorted."""
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(FRACTIONS[0] * len(idx))
        n_val = round(FRACTIONS[1] * len(idx))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_train + n_val])
        parts["test"].append(idx[n_train + n_val:])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def apply_shift(x: np.ndarray, y: np.ndarray, shift: str) -> tuple[np.ndarray, np.ndarray]:
    """The target stage's change of distribution (see the module docstring)."""
    if shift == "transpose":
        return x.reshape(-1, 8, 8).transpose(0, 2, 1).reshape(-1, 64).copy(), y
    if shift == "invert":
        return 1.0 - x, y
    if shift == "flip":
        return x.reshape(-1, 8, 8)[:, :, ::-1].reshape(-1, 64).copy(), y
    if shift == "translate":  # one pixel to the right, zeros coming in on the left
        im = x.reshape(-1, 8, 8)
        out = np.zeros_like(im)
        out[:, :, 1:] = im[:, :, :-1]
        return out.reshape(-1, 64), y
    if shift == "blur":  # 3x3 box blur, zero padded
        padded = np.pad(x.reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
        out = sum(padded[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9.0
        return out.reshape(-1, 64).astype(np.float32), y
    if shift == "dim":  # the bottom half of every image at 30% intensity
        gain = np.ones((8, 8), dtype=np.float32)
        gain[4:] = 0.3
        return (x.reshape(-1, 8, 8) * gain).reshape(-1, 64), y
    if shift == "permute":
        return x, np.asarray(LABEL_PERMUTATION, dtype=np.int64)[y]
    if shift == "none":
        return x, y
    raise PluginError(f"task 'digits-mlp': unknown shift {shift!r}; known: {list(SHIFTS)}")


def index_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of indices: one fresh permutation per pass, batches may span passes."""
    if n <= 0 or batch_size <= 0:
        raise PluginError(f"cannot batch {n} examples in batches of {batch_size}")
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while buffer.numel() < batch_size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def recipe_params(steps: int, lr: float, batch_size: int, finetune_steps: int, finetune_lr: float,
                  recover_steps: int = 100, recover_lr: float = 1e-3) -> dict[str, Param]:
    """The training-recipe options every built-in task has, typed and explained once."""
    return {
        "steps": Param(steps, int, low=0, help="pretraining steps (train cells and base models)"),
        "batch_size": Param(batch_size, int, low=1, help="training batch size"),
        "lr": Param(lr, float, low=1e-12, help="pretraining learning rate (AdamW, cosine with warm-up)"),
        "finetune_steps": Param(finetune_steps, int, low=0, help="fine-tuning steps (adapt and head cells)"),
        "finetune_lr": Param(finetune_lr, float, low=1e-12, help="fine-tuning learning rate"),
        "recover_steps": Param(recover_steps, int, low=0, help="recovery steps after compression (recover = true)"),
        "recover_lr": Param(recover_lr, float, low=1e-12, help="recovery learning rate"),
    }


def digits_fingerprint(tag: str) -> str:
    """The data a digits task reads: its tag, the split seed and the bytes of scikit-learn's digits."""
    x, y = _load_digits()
    h = hashlib.sha256()
    h.update(f"{tag} split_seed={SPLIT_SEED}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class DigitsTask(Task):
    name = "digits-mlp"
    quality = Quality(name="accuracy", unit="fraction", higher_is_better=True)
    params = {
        "hidden": Param(128, int, low=1, high=65536, help="width of each hidden layer"),
        "depth": Param(2, int, low=1, high=64, help="hidden layers"),
        "shift": Param("transpose", choices=SHIFTS, help="the target stage's change from the source digits"),
        **recipe_params(steps=300, lr=3e-3, batch_size=64, finetune_steps=200, finetune_lr=1e-2),
    }
    description = (
        "MLP (64 -> hidden x depth, ReLU -> 10) on scikit-learn's 8x8 digits scaled to [0, 1]; "
        "fixed stratified 60/20/20 split. Target stage: transposed digits (images mirrored across "
        "the main diagonal); source stage (adapt pretraining): the original digits. Quality: test accuracy."
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["shift"] not in SHIFTS:
            raise PluginError(f"task {self.name!r}: unknown shift {self.options['shift']!r}; known: {list(SHIFTS)}")
        for key in ("hidden", "depth"):
            if int(self.options[key]) < 1:
                raise PluginError(f"task {self.name!r}: option {key!r} must be >= 1")
        self._cache: dict[str, dict[str, DigitsSplit]] = {}

    def fingerprint(self) -> str:
        return digits_fingerprint(f"digits-mlp/v1 shift={self.options['shift']}")

    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return DigitsMLP(int(self.options["hidden"]), int(self.options["depth"]))

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        if stage not in ("target", "source"):
            raise PluginError(f"task {self.name!r}: unknown stage {stage!r}; known: ['target', 'source']")
        if stage not in self._cache:
            x, y = _load_digits()
            parts = split_indices(y)  # from the original labels, so both stages share it
            if stage == "target":
                x, y = apply_shift(x, y, self.options["shift"])
            self._cache[stage] = {
                part: DigitsSplit(torch.from_numpy(x[idx].copy()), torch.from_numpy(y[idx].copy()))
                for part, idx in parts.items()
            }
        return dict(self._cache[stage])

    def recipe(self, purpose: str) -> Recipe:
        o = self.options
        if purpose == "pretrain":
            return Recipe(steps=int(o["steps"]), batch_size=int(o["batch_size"]), lr=float(o["lr"]))
        if purpose == "finetune":
            return Recipe(steps=int(o["finetune_steps"]), batch_size=int(o["batch_size"]), lr=float(o["finetune_lr"]))
        if purpose == "recover":
            return Recipe(steps=int(o["recover_steps"]), batch_size=int(o["batch_size"]), lr=float(o["recover_lr"]))
        raise PluginError(f"task {self.name!r}: unknown recipe purpose {purpose!r}; known: pretrain, finetune, recover")

    def batches(self, split: DigitsSplit, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        for idx in index_stream(len(split), batch_size, generator):
            yield split.x[idx], split.y[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = self.to_device(batch, model_device(model))
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, split: DigitsSplit) -> float:
        was_training = model.training
        device = model_device(model)
        model.eval()
        try:
            with torch.no_grad():
                correct = 0
                for start in range(0, len(split), 1024):
                    x = split.x[start:start + 1024].to(device)
                    y = split.y[start:start + 1024].to(device)
                    correct += int((model(x).argmax(dim=-1) == y).sum())
        finally:
            model.train(was_training)
        return correct / len(split)

    def features(self, model: nn.Module, split: DigitsSplit) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the head receives (n, d), labels (n,)) over the whole split, in order. digits-cnn
        inherits it: there the features are the globally pooled channels."""
        device = model_device(model)

        def run() -> None:
            for start in range(0, len(split), 1024):
                model(split.x[start:start + 1024].to(device))

        return head_inputs(model, run), split.y.clone()
    def predictions(self, model: nn.Module, split: DigitsSplit) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) over the whole split on the CPU, in eval mode (calibration metrics).
        digits-cnn inherits it: its splits hold images, the model takes them as they are."""
        was_training = model.training
        device = model_device(model)
        model.eval()
        try:
            with torch.no_grad():
                logits = [model(split.x[s:s + 1024].to(device)).float().cpu() for s in range(0, len(split), 1024)]
        finally:
            model.train(was_training)
        return torch.cat(logits), split.y.clone()

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(0)
        return (torch.rand(batch_size, 64, generator=g).to(device),)

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch_size, 64, generator=g)
        y = torch.randint(0, 10, (batch_size,), generator=g)
        return x.to(device), y.to(device)


@hookimpl
def register_tasks(register) -> None:
    register(DigitsTask)
