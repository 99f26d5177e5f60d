"""The standard metrics, registered like any plugin's: params, flops, latency, memory.

Each is a thin adapter from MeasureContext to lowdim_bench.measure; the protocol knobs come
from the suite's [protocol] table (docs/measurement.md).
"""
from __future__ import annotations

import copy

import torch

from lowdim_bench.api import Measurement, MeasureContext, Metric
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.measure import flops, latency, memory, params


def _train_step(ctx: MeasureContext, model: torch.nn.Module, batch_size: int):
    batch = ctx.task.example_batch(batch_size, ctx.device)
    return lambda: ctx.task.loss(model, batch)


class ParamsMetric(Metric):
    name = "params"
    description = "Total, trainable and stored parameters; stored bytes with sparse indices."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        c = params.count_params(ctx.model)
        return [Measurement("params_total", c.total, "params"), Measurement("params_trainable", c.trainable, "params"),
                Measurement("params_stored", c.stored, "params"), Measurement("stored_bytes", c.stored_bytes, "B"),
                Measurement("index_bytes", c.index_bytes, "B")]


class FlopsMetric(Metric):
    name = "flops"
    description = "ATen-level FLOPs per sample (2 x MACs), forward and training step; executed and ideal."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        bs = int(ctx.protocol.get("train_batch_size", 64))
        fwd = flops.forward_flops(ctx.inference_model.eval(), ctx.task.example_inputs(bs, ctx.device))
        train_model = copy.deepcopy(ctx.model).train()
        step = flops.train_step_flops(train_model, _train_step(ctx, train_model, bs))
        return [Measurement("flops_forward", fwd.executed / bs, "FLOPs/sample"),
                Measurement("flops_forward_ideal", fwd.ideal / bs, "FLOPs/sample"),
                Measurement("flops_train_step", step.executed / bs, "FLOPs/sample"),
                Measurement("flops_train_step_ideal", step.ideal / bs, "FLOPs/sample")]


class LatencyMetric(Metric):
    name = "latency"
    description = "Per-call wall time after warm-up: p50/p90/p99 and spread, inference per batch size and one training step."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        p = ctx.protocol
        warmup, repeats, cap = int(p["warmup"]), int(p["repeats"]), float(p["max_seconds"]) or None
        out: list[Measurement] = []

        def emit(stats: latency.LatencyStats, phase: str, bs: int) -> None:
            for name in ("p50", "p90", "p99"):
                out.append(Measurement(f"latency_{name}", getattr(stats, name), "s", phase, bs))
            out.append(Measurement("latency_spread", stats.spread, "p90/p50", phase, bs))
            out.append(Measurement("latency_n", stats.n, "calls", phase, bs))

        model = ctx.inference_model.eval()
        for bs in p["batch_sizes"]:
            stats = latency.time_inference(model, ctx.task.example_inputs(int(bs), ctx.device), warmup, repeats,
                                           ctx.device, cap)
            emit(stats, "inference", int(bs))
        bs = int(p["train_batch_size"])
        train_model = copy.deepcopy(ctx.model).train()
        opt = ctx.make_optimizer(train_model)
        stats = latency.time_train_step(train_model, _train_step(ctx, train_model, bs), opt, warmup, repeats,
                                        ctx.device, cap)
        emit(stats, "train_step", bs)
        return out


class MemoryMetric(Metric):
    name = "memory"
    description = "Peak tensor bytes of one training step and of inference, split by category; process peak beside it."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        bs = int(ctx.protocol["memory_batch_size"])
        out: list[Measurement] = []

        def emit(b: memory.MemoryBreakdown, phase: str) -> None:
            for name in ("parameters", "gradients", "optimizer", "activations", "other", "peak", "activations_max"):
                out.append(Measurement(f"memory_{name}", getattr(b, name), "B", phase, bs))
            for name in ("process_peak", "cuda_allocated_peak", "cuda_reserved_peak"):
                if getattr(b, name) is not None:
                    out.append(Measurement(f"memory_{name}", getattr(b, name), "B", phase, bs))

        train_model = copy.deepcopy(ctx.model).train()
        opt = ctx.make_optimizer(train_model)
        emit(memory.measure_train_step(train_model, _train_step(ctx, train_model, bs), opt, device=ctx.device),
             "train_step")
        emit(memory.measure_inference(ctx.inference_model.eval(), ctx.task.example_inputs(bs, ctx.device), device=ctx.device),
             "inference")
        return out


@hookimpl
def register_metrics(register) -> None:
    for cls in (ParamsMetric, FlopsMetric, LatencyMetric, MemoryMetric):
        register(cls)
