"""Fixtures for the kit's core-v2 checks: tasks under the harness's seeding, metrics that read
the base and applied models, analyses, and merge methods; each bad one has one known bug.

Written only against the public API, as a third-party author would.
"""
from __future__ import annotations

import copy
import math
import os

import polars as pl
import torch
from torch import nn

from kit_fixtures import BlobTask, DepthMetric
from lowdim_bench.api import (Analysis, AnalysisRecord, AnalysisResult, ConfigError, Knob, Measurement, Method,
                              PluginError)


# ---- tasks ------------------------------------------------------------------------------

class DropoutTask(BlobTask):
    """An MLP with dropout: training draws masks from the global RNG, which the harness seeds."""

    name = "kit-dropout"

    def make_model(self, seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))


class EntropyTask(BlobTask):
    """make_model seeds a private generator from the OS: no seeding makes two calls agree."""

    name = "kit-entropy"

    def make_model(self, seed):
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        return model


# ---- metrics ------------------------------------------------------------------------------

class UpdateNormMetric(DepthMetric):
    """||W - W0|| over the base's Linears: crashes without ctx.base_model."""

    name = "kit-update-norm"
    description = "norm of the learned update"

    def measure(self, ctx):
        trained = dict(ctx.model.named_modules())
        total = sum(float((trained[n].weight - m.weight).detach().norm() ** 2) for n, m in ctx.base_model.named_modules()
                    if isinstance(m, nn.Linear))
        return [Measurement("update_norm", math.sqrt(total), "l2", higher_is_better=None)]


class AppliedMetric(DepthMetric):
    """Reads the model before training, and declares it."""

    name = "kit-applied"
    needs = ("applied_model",)
    description = "parameters that moved in training"

    def measure(self, ctx):
        before = dict(ctx.applied_model.named_parameters())
        moved = sum(int((p != before[n]).any()) for n, p in ctx.model.named_parameters())
        return [Measurement("moved_tensors", moved, "tensors")]


class UndeclaredAppliedMetric(AppliedMetric):
    """Reads ctx.applied_model without declaring needs: it is None then, as in the harness."""

    name = "kit-undeclared"
    needs = ()


class UnknownNeedsMetric(DepthMetric):
    name = "kit-unknown-needs"
    needs = ("optimizer_state",)


# ---- analyses -----------------------------------------------------------------------------

class MeanByMethod(Analysis):
    """A correct analysis: mean of one metric per method entry, its table checked up front."""

    name = "kit-mean"
    table = "kit_mean"
    needs = ("model",)
    description = "mean of a metric per method entry"

    def validate(self, raw, suite):
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a table, got {raw!r}")
        if raw.get("metric", "quality") not in ("quality", "quality_val"):
            raise ConfigError(f"expected quality or quality_val, got {raw['metric']!r}", key="metric")
        return {"metric": raw.get("metric", "quality")}

    def run(self, ctx):
        ok = ctx.records.filter((pl.col("metric") == ctx.options["metric"]) & (pl.col("status") == "ok"))
        table = ok.group_by("method").agg(pl.col("value").mean().alias("mean")).sort("method")
        sizes = {a.cell_key: a.bytes for a in ctx.artefacts.list("model")}
        loaded = [ctx.artefacts.load_model(k) for k in list(sizes)[:1]]
        assert all(isinstance(m, nn.Module) for m in loaded) and loaded
        recs = [AnalysisRecord("mean", v, "fraction", method=m, higher_is_better=True) for m, v in table.iter_rows()]
        return AnalysisResult(table, f"## Mean\n\n{len(table)} entries, {len(sizes)} saved models\n", recs)


class RaisesValueError(MeanByMethod):
    """Refuses a bad table with a ValueError: the suite loader cannot name the field."""

    name = "kit-value-error"

    def validate(self, raw, suite):
        if not isinstance(raw, dict):
            raise ValueError("not a table")
        return super().validate(raw, suite)


class AcceptsAnything(MeanByMethod):
    name = "kit-accepts"

    def validate(self, raw, suite):
        return {"metric": "quality"}


class NestedTable(MeanByMethod):
    """Its table has a list column, which CSV cannot hold (the runner writes <name>.csv)."""

    name = "kit-nested"

    def run(self, ctx):
        out = super().run(ctx)
        return AnalysisResult(out.table.with_columns(pl.lit([1, 2]).alias("pair")), out.markdown, out.records)


class NanRecord(MeanByMethod):
    name = "kit-nan"

    def run(self, ctx):
        out = super().run(ctx)
        return AnalysisResult(out.table, out.markdown, [AnalysisRecord("mean", float("nan"), "fraction")])


# ---- merge methods ------------------------------------------------------------------------

class AverageMerge(Method):
    """A correct merge: theta_0 + lambda * mean task vector."""

    name = "kit-average"
    kind = "merge"
    knob = Knob("scaling", 0.1, 1.0, integer=False)
    targets = ("Module",)
    description = "weight averaging of the members (kit control)"

    def apply(self, model, size, ctx):
        if not ctx.members:
            raise PluginError("no members")
        merged = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in merged.named_parameters():
                tau = sum(dict(m.named_parameters())[name] - p for m in ctx.members.values())
                p.add_(float(size) * tau / len(ctx.members))
        return merged


class MutatesMembers(AverageMerge):
    """Merges into the first member in place and returns it."""

    name = "kit-mutates-members"

    def apply(self, model, size, ctx):
        first, *rest = ctx.members.values()
        with torch.no_grad():
            for name, p in first.named_parameters():
                p.add_(sum(dict(m.named_parameters())[name] for m in rest))
        return copy.deepcopy(first)
