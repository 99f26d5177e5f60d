"""Fixture plugins for the core v2 contract: a task with dict batches, keyword inputs and a
pretrained base; a task family with a merge method; a metric that sees the base model; an
analysis from a "third party". Loaded like fakeplugins (LOWDIM_BENCH_PLUGIN_MODULES=coreplugins).
"""
from __future__ import annotations

import copy
from typing import Any, Iterator

import polars as pl
import torch
from torch import nn

from lowdim_bench import api
from lowdim_bench.api import Inputs, Knob, Measurement, Method, Metric, Param, Quality, Recipe, Task
from lowdim_bench.hookspecs import hookimpl

VOCAB, D, CLASSES, SEQ = 40, 16, 3, 6


class KeywordModel(nn.Module):
    """Embedding -> Linear per token -> masked mean pool -> head; called with keywords only, like a
    Hugging Face encoder: model(input_ids=..., attention_mask=...)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.proj = nn.Linear(D, D)
        self.head = nn.Linear(D, CLASSES)

    def forward(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.proj(self.embed(input_ids)))
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * mask).sum(1) / mask.sum(1).clamp(min=1))


def dense_flops_per_sample() -> int:
    """Closed form: 2 x MACs of the Linears, per token for proj, per sample for the head."""
    return 2 * SEQ * D * D + 2 * D * CLASSES


class DictTask(Task):
    name = "dict-tiny"
    quality = Quality("accuracy", "fraction", True)
    params = {"n": Param(240, int, low=30, help="examples per split set"),
              "steps": Param(20, int, low=0, help="fine-tuning steps")}
    budget_scope = "all parameters but the embedding table"
    description = "Token sequences whose class is the majority token range; keyword inputs, dict batches."
    pretrained_calls: list[str] = []

    def make_model(self, seed: int) -> nn.Module:
        raise AssertionError("a task with a pretrained base is never trained from make_model")

    def pretrained(self, stage: str, seed: int) -> nn.Module:
        torch.manual_seed(100 + seed)
        return KeywordModel()

    def in_budget(self, param_name: str) -> bool:
        return not param_name.startswith("embed.")

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(7)
        n = self.options["n"]
        y = torch.arange(n) % CLASSES
        ids = (y.unsqueeze(1) * (VOCAB // CLASSES) + torch.randint(VOCAB // CLASSES, (n, SEQ), generator=g))
        mask = torch.ones(n, SEQ, dtype=torch.long)
        mask[::4, -2:] = 0
        data = {"input_ids": ids, "attention_mask": mask, "labels": y}
        cut = [int(0.6 * n), int(0.8 * n)]
        part = lambda a, b: {k: v[a:b] for k, v in data.items()}  # noqa: E731
        return {"train": part(0, cut[0]), "val": part(cut[0], cut[1]), "test": part(cut[1], n)}

    def recipe(self, purpose: str) -> Recipe:
        return Recipe(steps=self.options["steps"], batch_size=16, lr=1e-2, log_every=5)

    def batches(self, split, batch_size: int, generator: torch.Generator) -> Iterator:
        n = len(split["labels"])
        while True:
            idx = torch.randint(n, (batch_size,), generator=generator)
            yield {k: v[idx] for k, v in split.items()}

    def loss(self, model, batch):
        return nn.functional.cross_entropy(self.model_inputs(batch).call(model), batch["labels"])

    def evaluate(self, model, split) -> float:
        with torch.no_grad():
            return float((self.model_inputs(split).call(model).argmax(-1) == split["labels"]).float().mean())

    def example_inputs(self, batch_size: int, device) -> Inputs:
        ids = torch.randint(VOCAB, (batch_size, SEQ), device=device)
        return Inputs((), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def example_batch(self, batch_size: int, device):
        return {**self.example_inputs(batch_size, device).kwargs,
                "labels": torch.randint(CLASSES, (batch_size,), device=device)}

    def sequence_length(self, inputs: Inputs) -> int | None:
        return int(inputs.kwargs["input_ids"].shape[1])


class FamilyTask(Task):
    """Three members, each a different label map of the same blobs, each with its own head."""

    name = "family-tiny"
    quality = Quality("accuracy", "fraction", True)
    params = {"steps": Param(25, int, low=0)}
    MAPS = {"a": [0, 1, 2], "b": [2, 0, 1], "c": [1, 2, 0]}

    def members(self) -> list[str]:
        return list(self.MAPS)

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(3)
        centres = torch.randn(3, 8, generator=g) * 2
        y = torch.arange(300) % 3
        x = centres[y] + torch.randn(len(y), 8, generator=g)
        if stage.startswith("member:"):
            y = torch.tensor(self.MAPS[stage.split(":", 1)[1]])[y]
        return {"train": (x[:200], y[:200]), "val": (x[200:250], y[200:250]), "test": (x[250:], y[250:])}

    def recipe(self, purpose: str) -> Recipe:
        return Recipe(steps=self.options["steps"], batch_size=32, lr=1e-2, log_every=10)

    def batches(self, split, batch_size, generator):
        x, y = split
        while True:
            idx = torch.randint(len(y), (batch_size,), generator=generator)
            yield x[idx], y[idx]

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model, split) -> float:
        x, y = split
        with torch.no_grad():
            return float((model(x).argmax(-1) == y).float().mean())

    def member_view(self, merged: nn.Module, member: str, member_model: nn.Module) -> nn.Module:
        view = copy.deepcopy(merged)
        view[2] = copy.deepcopy(member_model[2])  # each member keeps its own head
        return view

    def example_inputs(self, batch_size: int, device) -> tuple:
        return (torch.randn(batch_size, 8, device=device),)

    def example_batch(self, batch_size: int, device):
        return torch.randn(batch_size, 8, device=device), torch.randint(3, (batch_size,), device=device)


class MeanMerge(Method):
    """Task arithmetic with lambda = keep / members: the fixture's merge (keep is the knob)."""

    name = "fixture-merge"
    kind = "merge"
    knob = Knob("keep", 0.01, 1.0, integer=False)

    def apply(self, model, size, ctx):
        assert ctx.members and ctx.kind == "merge"
        merged = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in merged.named_parameters():
                tau = sum(dict(m.named_parameters())[name] - p for m in ctx.members.values())
                p.add_(float(size) * tau / len(ctx.members))
        return merged


def effective_weight(layer: nn.Module, d_in: int) -> torch.Tensor:
    """W of any Linear-like layer, read off by probing: f(I) - f(0) (works for LoRA wrappers too)."""
    eye = torch.eye(d_in)
    with torch.no_grad():
        return (layer(eye) - layer(torch.zeros(1, d_in))).T


class UpdateRank(Metric):
    """Effective rank of W - W0 (entropy of the normalised spectrum, exponentiated), summed over
    the base's Linear layers: it needs the base model the method was applied to."""

    name = "update-rank"

    def measure(self, ctx: api.MeasureContext) -> list[Measurement]:
        total = 0.0
        trained = dict(ctx.model.named_modules())
        for name, base in ctx.base_model.named_modules():
            if isinstance(base, nn.Linear) and name in trained:
                delta = effective_weight(trained[name], base.in_features) - base.weight.detach()
                s = torch.linalg.svdvals(delta.double())
                if float(s.sum()) > 1e-9:
                    p = s / s.sum()
                    total += float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))
        return [Measurement("update_effective_rank", total, "rank", higher_is_better=None)]


class QualityTable(api.Analysis):
    """A third party's analysis: mean quality per method, as a table and one record per method."""

    name = "fixture-table"
    description = "Mean quality per method entry."

    def run(self, ctx: api.AnalysisContext) -> api.AnalysisResult:
        q = ctx.records.filter((pl.col("metric") == "quality") & (pl.col("status") == "ok"))
        table = q.group_by("method").agg(pl.col("value").mean().alias("mean_quality")).sort("method")
        recs = [api.AnalysisRecord("mean_quality", v, "fraction", method=m) for m, v in table.iter_rows()]
        return api.AnalysisResult(table, "## Fixture table\n\n" + str(len(table)) + " methods\n", recs)


@hookimpl
def register_tasks(register) -> None:
    register(DictTask)
    register(FamilyTask)


@hookimpl
def register_methods(register) -> None:
    register(MeanMerge)


@hookimpl
def register_metrics(register) -> None:
    register(UpdateRank)


@hookimpl
def register_analyses(register) -> None:
    register(QualityTable)
