"""stdlib-lm: a byte-level LLaMA-style decoder trained on the Python standard library's source.

The corpus is this Python's own stdlib .py files (see _stdlib_corpus: hash-based splits, a byte
cap, a fingerprint of every file read). The "target" stage is the part named by the `target`
option ("library": non-test modules, the default; or "tests"); "source" is the other part, so
adapt methods pretrain on one kind of Python and are scored on the other.

Quality is bits per byte on the test split: the mean cross-entropy (nats) of every predicted
byte divided by ln 2, over a fixed set of windows (at most `eval_windows` of them, spaced evenly
over the split) so evaluation is deterministic and cheap on a CPU. A model that knows nothing
(uniform logits) scores exactly 8.
"""
from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import Inputs, Param, PluginError, Quality, Recipe, Task
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench_builtin.tasks.digits_mlp import recipe_params

from ._features import head_inputs
from ._lm_model import ByteLM, LMConfig
from ._stdlib_corpus import PARTS, MissingCorpusPart, load_corpus, stdlib_root

EVAL_BATCH = 32  # windows per forward pass when evaluating
FEATURE_WINDOWS = 16  # windows whose tokens `features` returns (16 x context rows)


@dataclass
class ByteSplit:
    """One split's bytes as a 1-D uint8 tensor on the CPU."""

    name: str
    data: torch.Tensor

    def __len__(self) -> int:
        return int(self.data.numel())


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def eval_starts(n_bytes: int, context: int, max_windows: int) -> torch.Tensor:
    """Start offsets of non-overlapping windows of context+1 bytes, evenly spaced, deterministic."""
    available = (n_bytes - 1) // context
    if available < 1:
        raise PluginError(f"split of {n_bytes} bytes is too short for one window of {context + 1} bytes")
    k = min(available, max_windows)
    return (torch.arange(k) * available // k) * context


def windows(data: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-byte targets (len(starts), context), int64."""
    idx = starts[:, None] + torch.arange(context + 1)[None, :]
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def bits_per_byte(model: nn.Module, data: torch.Tensor, starts: torch.Tensor, context: int) -> float:
    """Mean cross-entropy in bits over every target byte of the given windows."""
    device = model_device(model)
    total_nats, count = 0.0, 0
    for i in range(0, len(starts), EVAL_BATCH):
        x, y = windows(data, starts[i:i + EVAL_BATCH], context)
        logits = model(x.to(device)).float()
        nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1), reduction="none")
        total_nats += nats.double().sum().item()  # summed in float64 so many bytes add up exactly
        count += y.numel()
    return total_nats / count / math.log(2)


class StdlibLM(Task):
    name = "stdlib-lm"
    quality = Quality(name="bits_per_byte", unit="bits/byte", higher_is_better=False)
    params = {
        "d_model": Param(128, int, low=1, help="model width (a multiple of n_heads)"),
        "n_layers": Param(2, int, low=1, help="decoder blocks"),
        "n_heads": Param(4, int, low=1, help="attention heads"),
        "d_ff": Param(384, int, low=1, help="SwiGLU hidden width"),
        "context": Param(128, int, low=1, help="bytes per training window (the sequence length)"),
        **recipe_params(steps=300, lr=3e-3, batch_size=16, finetune_steps=150, finetune_lr=1e-3),
        "max_corpus_bytes": Param(2_000_000, int, low=1, help="read at most this many bytes of library source"),
        "eval_windows": Param(256, int, low=1, help="windows scored on val and test"),
        "target": Param("library", choices=PARTS, help="the part of the library the target stage is: the other "
                        "part is the source stage (library code vs its tests)"),
    }
    description = (
        "Byte-level LLaMA-style decoder (RMSNorm, rotary, SwiGLU, causal SDPA, untied head) on this "
        "Python's standard library .py files, split 80/10/10 by a hash of each file's path, capped at "
        "max_corpus_bytes per part. Target stage: non-test modules ('library', or 'tests' via the "
        "target option); source stage: the other part. Quality: bits per byte on the test split."
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["target"] not in PARTS:
            raise PluginError(f"task {self.name!r}: target must be one of {list(PARTS)}, got {self.options['target']!r}")
        for key in ("context", "batch_size", "max_corpus_bytes", "eval_windows"):
            if int(self.options[key]) < 1:
                raise PluginError(f"task {self.name!r}: option {key!r} must be >= 1")
        self.config = LMConfig(
            d_model=int(self.options["d_model"]),
            n_layers=int(self.options["n_layers"]),
            n_heads=int(self.options["n_heads"]),
            d_ff=int(self.options["d_ff"]),
            context=int(self.options["context"]),
        )
        self.config.check()
        self.root = str(stdlib_root())

    @property
    def context(self) -> int:
        return self.config.context

    def part_for(self, stage: str) -> str:
        if stage == "target":
            return self.options["target"]
        if stage == "source":
            return next(p for p in PARTS if p != self.options["target"])
        raise PluginError(f"task {self.name!r}: unknown stage {stage!r}; known: ['target', 'source']")

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"stdlib-lm/v1 python={sys.version} target={self.options['target']}\n".encode())
        for part in PARTS:
            try:
                h.update(f"{part}={load_corpus(self.root, part, int(self.options['max_corpus_bytes'])).fingerprint()}\n".encode())
            except MissingCorpusPart:
                h.update(f"{part}=missing\n".encode())
        return h.hexdigest()

    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ByteLM(self.config)

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        corpus = load_corpus(self.root, self.part_for(stage), int(self.options["max_corpus_bytes"]))
        out: dict[str, Any] = {}
        for name, raw in corpus.data.items():
            if len(raw) < self.context + 2:
                raise PluginError(
                    f"task {self.name!r}: the {name} split of part {corpus.part!r} has {len(raw)} bytes, too few "
                    f"for a window of {self.context + 1}; raise max_corpus_bytes"
                )
            out[name] = ByteSplit(name, torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        return out

    def recipe(self, purpose: str) -> Recipe:
        o = self.options
        steps_lr = {
            "pretrain": (o["steps"], o["lr"]),
            "finetune": (o["finetune_steps"], o["finetune_lr"]),
            "recover": (o["recover_steps"], o["recover_lr"]),
        }
        if purpose not in steps_lr:
            raise PluginError(f"task {self.name!r}: unknown recipe purpose {purpose!r}; known: {sorted(steps_lr)}")
        steps, lr = steps_lr[purpose]
        return Recipe(steps=int(steps), batch_size=int(o["batch_size"]), lr=float(lr), weight_decay=0.0)

    def batches(self, split: ByteSplit, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """Random windows: each batch draws batch_size start offsets from the generator."""
        high = len(split) - self.context
        if high < 1:
            raise PluginError(f"split {split.name!r} of {len(split)} bytes is shorter than one window")
        while True:
            starts = torch.randint(0, high, (batch_size,), generator=generator)
            yield windows(split.data, starts, self.context)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = self.to_device(batch, model_device(model))
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def evaluate(self, model: nn.Module, split: ByteSplit) -> float:
        starts = eval_starts(len(split), self.context, int(self.options["eval_windows"]))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return bits_per_byte(model, split.data, starts, self.context)
        finally:
            model.train(was_training)

    def features(self, model: nn.Module, split: ByteSplit) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the head receives at each position (n, d_model), the next byte there (n,)) over
        the first `FEATURE_WINDOWS` of the split's fixed evaluation windows: one row per token."""
        starts = eval_starts(len(split), self.context, int(self.options["eval_windows"]))[:FEATURE_WINDOWS]
        x, y = windows(split.data, starts, self.context)
        device = model_device(model)
        z = head_inputs(model, lambda: [model(x[i:i + EVAL_BATCH].to(device)) for i in range(0, len(x), EVAL_BATCH)])
        return z.reshape(-1, z.shape[-1]), y.reshape(-1)

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, self.config.vocab, (batch_size, self.context), generator=g).to(device),)

    def sequence_length(self, inputs: Inputs) -> int | None:
        return int(inputs.args[0].shape[1])

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        g = torch.Generator().manual_seed(0)
        chunk = torch.randint(0, self.config.vocab, (batch_size, self.context + 1), generator=g)
        return chunk[:, :-1].to(device), chunk[:, 1:].to(device)


@hookimpl
def register_tasks(register) -> None:
    register(StdlibLM)
