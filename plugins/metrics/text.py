"""Metrics for sequence models: embedding drift from the base model, and FLOPs per sequence length.

`embedding-cosine`: for each test text, the cosine between the pooled embedding (`Task.features`,
the head's input) of the measured model and of the base model the method was applied to (the
uncompressed model for compress cells, the pretrained one for adapt cells); the mean and the 5th
percentile over the texts. 1.0 means the method left the representation as it was.

`seq-flops`: forward FLOPs per sample at each length the task names (`Task.sequence_lengths()`,
e.g. the data's mean length and the padded length), counted on real texts cut or padded to that
length (`Task.example_inputs_at`). A transformer's cost grows with length (linearly in the
Linears, quadratically in attention), so the padded figure alone overstates what real data
costs. Both need those two task methods (hf-text has them); other tasks get a clear error.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import Inputs, Measurement, MeasureContext, Metric, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.measure import flops


class _Bound(nn.Module):
    """`model(*args, **kwargs)` as a no-argument module, for FLOP counters that take positional
    inputs only (the counter then sees the model as this module's child)."""

    def __init__(self, model: nn.Module, inputs: Inputs) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs

    def forward(self) -> Any:
        return self.inputs.call(self.model)


def forward_flops(model: nn.Module, inputs: Inputs) -> flops.FlopCount:
    """FLOPs of one forward call with keyword inputs (whole batch)."""
    return flops.forward_flops(_Bound(model, inputs), ())


class EmbeddingCosine(Metric):
    name = "embedding-cosine"
    description = ("Cosine of each test text's pooled embedding to the base model's (Task.features): mean and "
                   "5th percentile; 1.0 = representation unchanged.")

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        split = ctx.splits.get("test")
        if ctx.base_model is None or split is None:
            raise PluginError("embedding-cosine needs the cell's base model and test split (MeasureContext.base_model, .splits)")
        got = ctx.task.features(ctx.inference_model, split)
        if got is None:
            raise PluginError(f"embedding-cosine: task {ctx.task.name!r} does not expose features (Task.features)")
        ref = ctx.task.features(ctx.base_model, split)
        cos = F.cosine_similarity(got[0].double(), ref[0].double(), dim=1)
        return [Measurement("embedding_cosine", float(cos.mean()), "cosine", higher_is_better=True),
                Measurement("embedding_cosine_p05", float(torch.quantile(cos, 0.05)), "cosine", higher_is_better=True)]


class SeqFlops(Metric):
    name = "seq-flops"
    description = ("Forward FLOPs per sample at the task's sequence lengths (the data's mean and the padded one), "
                   "on real texts; executed and ideal.")

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        lengths = getattr(ctx.task, "sequence_lengths", None)
        inputs_at = getattr(ctx.task, "example_inputs_at", None)
        if not callable(lengths) or not callable(inputs_at):
            raise PluginError(f"seq-flops: task {ctx.task.name!r} has no sequence_lengths()/example_inputs_at()")
        model = ctx.inference_model.eval()
        bs = int(ctx.protocol.get("seq_flops_batch_size", 1))
        out: list[Measurement] = []
        for phase, seq_len in lengths().items():
            count = forward_flops(model, Inputs.of(inputs_at(bs, int(seq_len), ctx.device)))
            out.append(Measurement("flops_forward_seq", count.executed / bs, "FLOPs/sample", phase=phase,
                                   batch_size=bs, higher_is_better=False, seq_len=int(seq_len)))
            out.append(Measurement("flops_forward_seq_ideal", count.ideal / bs, "FLOPs/sample", phase=phase,
                                   batch_size=bs, higher_is_better=False, seq_len=int(seq_len)))
        return out


@hookimpl
def register_metrics(register) -> None:
    for cls in (EmbeddingCosine, SeqFlops):
        register(cls)
