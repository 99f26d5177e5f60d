"""The standard metrics, registered like any plugin's: params, flops, latency, memory.

Each is a thin adapter from MeasureContext to lowdim_bench.measure; the protocol knobs come
from the suite's [protocol] table (docs/measurement.md).
"""
from __future__ import annotations

import copy

import torch

from lowdim_bench.api import Inputs, Measurement, MeasureContext, Metric
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.measure import flops, latency, memory, params, roofline


def _train_step(ctx: MeasureContext, model: torch.nn.Module, batch_size: int):
    batch = ctx.task.example_batch(batch_size, ctx.device)
    return lambda: ctx.task.loss(model, batch)


class ParamsMetric(Metric):
    name = "params"
    description = "Total, trainable and stored parameters; stored bytes with sparse indices."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        c = params.count_params(ctx.model)
        out = [Measurement("params_total", c.total, "params"), Measurement("params_trainable", c.trainable, "params"),
               Measurement("params_stored", c.stored, "params"), Measurement("stored_bytes", c.stored_bytes, "B"),
               Measurement("index_bytes", c.index_bytes, "B")]
        scoped = params.count_params(ctx.model, ctx.task.in_budget)
        if scoped.total != c.total or scoped.stored != c.stored:  # the task's budget scope leaves some out
            out += [Measurement("params_trainable_in_scope", scoped.trainable, "params"),
                    Measurement("params_stored_in_scope", scoped.stored, "params")]
        for m in out:
            m.higher_is_better = False
        return out


class FlopsMetric(Metric):
    name = "flops"
    description = "ATen-level FLOPs per sample (2 x MACs), forward and training step; executed and ideal."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        bs = int(ctx.protocol.get("train_batch_size", 64))
        inputs = ctx.example_inputs(bs)
        seq = ctx.task.sequence_length(inputs)
        fwd = flops.forward_flops(ctx.inference_model.eval(), inputs)
        train_model = copy.deepcopy(ctx.model).train()
        step = flops.train_step_flops(train_model, _train_step(ctx, train_model, bs))

        def per_sample(metric: str, value: float) -> Measurement:  # the input shape goes into the record
            return Measurement(metric, value / bs, "FLOPs/sample", batch_size=bs, higher_is_better=False, seq_len=seq)

        out = [per_sample("flops_forward", fwd.executed), per_sample("flops_forward_ideal", fwd.ideal),
               per_sample("flops_train_step", step.executed), per_sample("flops_train_step_ideal", step.ideal)]
        # executed FLOPs per top-level child module: "flops_forward.body", "flops_train_step.head"
        out += [per_sample(f"flops_forward.{name}", v) for name, v in fwd.by_module.items()]
        out += [per_sample(f"flops_train_step.{name}", v) for name, v in step.by_module.items()]
        return out


class LatencyMetric(Metric):
    name = "latency"
    description = ("Per-call wall time after warm-up: p50/p90/p99 and spread, inference per batch size (unless the "
                   "protocol leaves it to the interleaved pass) and one training step.")

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        p = ctx.protocol
        warmup, repeats, cap = int(p["warmup"]), int(p["repeats"]), float(p["max_seconds"]) or None
        out: list[Measurement] = []

        cal = None
        if p.get("roofline", True):
            try:  # cached at run start; a failed calibration costs the bound, not the latency figures
                cal = roofline.calibrate(ctx.device)
            except (RuntimeError, ValueError, OSError):
                cal = None
        out.append(Measurement("threads", torch.get_num_threads(), "threads"))
        seq: int | None = None
        if cal is not None:
            out += [Measurement("roofline_peak_flops", cal.matmul_flops, "FLOP/s"),
                    Measurement("roofline_peak_bandwidth", cal.bandwidth, "B/s")]

        def emit(stats: latency.LatencyStats, phase: str, bs: int, work: tuple[float, float] | None = None) -> None:
            for name in ("p50", "p90", "p99"):
                out.append(Measurement(f"latency_{name}", getattr(stats, name), "s", phase, bs, False, seq))
            out.append(Measurement("latency_spread", stats.spread, "p90/p50", phase, bs, False, seq))
            out.append(Measurement("latency_n", stats.n, "calls", phase, bs, None, seq))
            if cal is not None and work is not None:
                out.extend(roofline_measurements(roofline.bound(work[0], work[1], cal, stats.p50), phase, bs))

        model = ctx.inference_model.eval()
        # `cell_inference_latency = false`: the interleaved pass (the comparable figure) times inference
        for bs in p["batch_sizes"] if p.get("cell_inference_latency", True) else []:
            inputs = ctx.example_inputs(int(bs))
            seq = ctx.task.sequence_length(inputs)
            stats = latency.time_inference(model, inputs, warmup, repeats, ctx.device, cap)
            emit(stats, "inference", int(bs), inference_work(model, inputs) if cal else None)
            if p.get("compile", False):
                timed = latency.time_compiled_inference(model, inputs, warmup, repeats, ctx.device, cap)
                out.append(Measurement("compile_seconds", timed.compile_seconds, "s", "inference_compiled", int(bs)))
                emit(timed.stats, "inference_compiled", int(bs), inference_work(model, inputs) if cal else None)
        bs = int(p["train_batch_size"])
        seq = ctx.task.sequence_length(ctx.example_inputs(bs))
        train_model = copy.deepcopy(ctx.model).train()
        opt = ctx.make_optimizer(train_model)
        step_fn = _train_step(ctx, train_model, bs)
        stats = latency.time_train_step(train_model, step_fn, opt, warmup, repeats, ctx.device, cap)
        work = None
        if cal is not None:  # after timing, so the optimizer's lazily created state exists
            batch = ctx.task.example_batch(bs, ctx.device)
            step_flops = flops.train_step_flops(train_model, step_fn).ideal
            train_model.zero_grad(set_to_none=True)
            work = (step_flops, roofline.train_step_bytes(train_model, opt, batch))
        emit(stats, "train_step", bs, work)
        return out


def inference_work(model: torch.nn.Module, inputs: Inputs) -> tuple[float, float]:
    """(ideal FLOPs, bytes moved) of one inference call, for its roofline bound."""
    with latency.eval_mode(model), torch.no_grad():
        outputs = inputs.call(model)
        count = flops.forward_flops(model, inputs)
    return float(count.ideal), float(roofline.inference_bytes(model, inputs, outputs))


def roofline_measurements(b: roofline.Bound, phase: str, bs: int) -> list[Measurement]:
    """A latency figure's roofline: bound time, fraction of it reached, arithmetic intensity."""
    return [Measurement("roofline_bound", b.seconds, "s", phase, bs),
            Measurement("roofline_fraction", b.fraction, "fraction", phase, bs),
            Measurement("arithmetic_intensity", b.intensity, "FLOP/B", phase, bs)]


# Where a step's memory peak can fall (lowdim_bench.measure.memory), in order; a record's value is
# the index, its unit names them, so the figure stays numeric like every other.
PEAK_PHASES = ("start", "zero_grad", "forward", "backward", "optimizer", "end")
PEAK_PHASE_UNIT = "phase index: " + ", ".join(f"{i} {p}" for i, p in enumerate(PEAK_PHASES))


class MemoryMetric(Metric):
    name = "memory"
    description = "Peak tensor bytes of one training step and of inference, split by category; process peak beside it."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        bs = int(ctx.protocol["memory_batch_size"])
        out: list[Measurement] = []

        def emit(b: memory.MemoryBreakdown, phase: str) -> None:
            for name in ("parameters", "gradients", "optimizer", "activations", "other", "peak", "activations_max"):
                out.append(Measurement(f"memory_{name}", getattr(b, name), "B", phase, bs, False))
            if b.peak_phase in PEAK_PHASES:  # where in the step the peak fell, as its index in PEAK_PHASES
                out.append(Measurement("memory_peak_phase", PEAK_PHASES.index(b.peak_phase), PEAK_PHASE_UNIT, phase, bs))
            for name in ("process_peak", "cuda_allocated_peak", "cuda_reserved_peak"):
                if getattr(b, name) is not None:
                    out.append(Measurement(f"memory_{name}", getattr(b, name), "B", phase, bs, False))

        train_model = copy.deepcopy(ctx.model).train()
        opt = ctx.make_optimizer(train_model)
        emit(memory.measure_train_step(train_model, _train_step(ctx, train_model, bs), opt, device=ctx.device),
             "train_step")
        # the analytic split beside the measured one, when the optimizer's state size is known
        opt_name = type(opt).__name__.lower()
        if opt_name == "sgd" and any(g.get("momentum", 0) for g in opt.param_groups):
            opt_name = "sgd_momentum"
        try:
            analytic = memory.analytic_train_memory(train_model, opt_name)
        except ValueError:  # a method's own optimizer with unknown state: no analytic figure
            analytic = {}
        for name, value in analytic.items():
            out.append(Measurement(f"memory_analytic_{name}", value, "B", "train_step", bs, False))
        emit(memory.measure_inference(ctx.inference_model.eval(), ctx.example_inputs(bs), device=ctx.device),
             "inference")
        return out


@hookimpl
def register_metrics(register) -> None:
    for cls in (ParamsMetric, FlopsMetric, LatencyMetric, MemoryMetric):
        register(cls)
