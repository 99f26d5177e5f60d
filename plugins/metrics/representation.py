"""Metrics that look inside a trained model: its features and how far its weights moved.

- `coding-rate`: R, R_c and delta R (MCR^2) of the penultimate features (`Task.features`) on the
  cell's test split, with the eps, d and m they were computed at (comparable only at equal ones);
  with a base model, its delta R (phase "base") and the linear / debiased CKA between the base's
  and the trained model's features: how far training moved the representation.
- `weight-spectra`: for each Linear / Conv2d of the base whose weight training changed, the
  effective rank and leading singular values of the trained weight and of the update W - W0, the
  update's size relative to W0 and its share in the base's top-8 singular subspaces (beside a
  random update's share). Without a base model: the trained weights' spectra only.
- `transfer-probe`: a logistic-regression probe on the trained model's penultimate features over
  the task's *other* stage ("source": data the cell was not fine-tuned on), fitted on its train
  split and scored on its test split. GCR's transfer claim is about such frozen-feature probes.

Features come from the cell's target splits (`MeasureContext.splits`; the task's own splits at
seed 0 when the harness gives none; the built-in tasks' splits do not depend on the seed).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lowdim_bench.api import Measurement, MeasureContext, Metric, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import find_layers
from lowdim_bench_builtin.analyses._coding_rate import DEFAULT_EPS, rate_reduction
from lowdim_bench_builtin.analyses._similarity import debiased_cka, linear_cka

from ._spectra import effective_rank, effective_weights, singular_values, update_stats

TOP_R = 8  # the base's top-r singular subspaces an update is measured against
N_SV = 8  # leading singular values recorded per weight
PROBE_STAGE = "source"


def _splits(ctx: MeasureContext) -> dict[str, Any]:
    return ctx.splits or ctx.task.splits("target", 0)


def _features(task, model: nn.Module, split: Any) -> tuple[torch.Tensor, torch.Tensor]:
    out = task.features(model, split)
    if out is None:
        raise PluginError(f"task {task.name!r} does not provide features (Task.features returned None)")
    return out


class CodingRateMetric(Metric):
    name = "coding-rate"
    description = ("MCR^2 coding rate R, class-conditional R_c and delta R of the penultimate test features "
                   f"(eps^2 = {DEFAULT_EPS ** 2:g}, unit sphere), with eps, d, m; CKA to the base model's features.")

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        test = _splits(ctx)["test"]
        z, y = _features(ctx.task, ctx.model, test)
        cr = rate_reduction(z, y)
        out = [Measurement("coding_rate_R", cr.r, "nats"), Measurement("coding_rate_Rc", cr.r_c, "nats"),
               Measurement("coding_rate_dR", cr.delta_r, "nats"),
               Measurement("coding_rate_eps", cr.eps, "eps"), Measurement("coding_rate_d", cr.d, "dims"),
               Measurement("coding_rate_m", cr.m, "samples"), Measurement("coding_rate_classes", cr.classes, "classes")]
        if ctx.base_model is not None:
            z0, y0 = _features(ctx.task, ctx.base_model, test)
            base = rate_reduction(z0, y0)
            out += [Measurement("coding_rate_R", base.r, "nats", phase="base"),
                    Measurement("coding_rate_dR", base.delta_r, "nats", phase="base"),
                    Measurement("feature_cka_to_base", linear_cka(z0, z), "fraction"),
                    Measurement("feature_dcka_to_base", debiased_cka(z0, z), "fraction")]
        return out


def _layer_names(model: nn.Module) -> list[str]:
    return [n for n, _ in find_layers(model, (nn.Linear, nn.Conv2d))]


class WeightSpectraMetric(Metric):
    name = "weight-spectra"
    description = (f"Effective rank and top-{N_SV} singular values of each changed weight and of its update W - W0; "
                   f"||dW||/||W0||; the update's share in the base's top-{TOP_R} singular subspaces.")

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        if ctx.base_model is None:
            return self._weights_only(ctx.model)
        names = _layer_names(ctx.base_model)
        w0 = effective_weights(ctx.base_model, names)
        w1 = effective_weights(ctx.model, names)
        out: list[Measurement] = []
        changed, delta_sq, base_sq, shares = 0, 0.0, 0.0, 0.0
        for name in names:
            if name not in w1 or w1[name].shape != w0[name].shape:
                continue  # replaced by something that is not this layer (a new head, a whole-model wrapper)
            a, b = w1[name].double().cpu(), w0[name].double().cpu()
            if torch.equal(a, b):
                continue
            s = update_stats(name, b, a, TOP_R, N_SV)
            changed += 1
            d_sq = float(((a - b) ** 2).sum())
            delta_sq, base_sq, shares = delta_sq + d_sq, base_sq + float((b ** 2).sum()), shares + s.top_r_share * d_sq
            out += [Measurement(f"weight_erank.{name}", s.weight_erank, "dims"),
                    Measurement(f"update_erank.{name}", s.update_erank, "dims"),
                    Measurement(f"update_rel_norm.{name}", s.update_rel_norm, "ratio"),
                    Measurement(f"update_top{TOP_R}_share.{name}", s.top_r_share, "fraction"),
                    Measurement(f"update_top{TOP_R}_random.{name}", s.random_share, "fraction")]
            for what, values in (("weight_sv", s.weight_sv), ("update_sv", s.update_sv)):
                out += [Measurement(f"{what}.{name}", v, "singular value", phase=f"sv{i + 1}")
                        for i, v in enumerate(values)]
        out.append(Measurement("layers_updated", changed, "layers"))
        if changed:
            out += [Measurement("update_rel_norm", math.sqrt(delta_sq / base_sq) if base_sq > 0 else 0.0, "ratio"),
                    Measurement(f"update_top{TOP_R}_share", shares / delta_sq if delta_sq > 0 else 0.0, "fraction")]
        return out

    @staticmethod
    def _weights_only(model: nn.Module) -> list[Measurement]:
        out: list[Measurement] = []
        for name, w in effective_weights(model, _layer_names(model)).items():
            s = singular_values(w)
            out.append(Measurement(f"weight_erank.{name}", effective_rank(s, is_spectrum=True), "dims"))
            out += [Measurement(f"weight_sv.{name}", float(v), "singular value", phase=f"sv{i + 1}")
                    for i, v in enumerate(s[:N_SV])]
        if not out:
            raise PluginError("weight-spectra: the model has no Linear or Conv2d weight to measure")
        return out


class TransferProbeMetric(Metric):
    name = "transfer-probe"
    description = ("Logistic-regression probe on the trained model's penultimate features over the task's 'source' "
                   "stage (train split fit, test split score): how well the features transfer.")

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        splits = ctx.task.splits(PROBE_STAGE, 0)
        x_tr, y_tr = _features(ctx.task, ctx.model, splits["train"])
        x_te, y_te = _features(ctx.task, ctx.model, splits["test"])
        scaler = StandardScaler().fit(x_tr.double().numpy())
        probe = LogisticRegression(max_iter=2000, C=1.0)
        probe.fit(scaler.transform(x_tr.double().numpy()), y_tr.numpy())
        acc = float(probe.score(scaler.transform(x_te.double().numpy()), y_te.numpy()))
        return [Measurement("transfer_probe_accuracy", acc, "fraction", phase=PROBE_STAGE, higher_is_better=True),
                Measurement("transfer_probe_error", 1.0 - acc, "fraction", phase=PROBE_STAGE, higher_is_better=False)]


@hookimpl
def register_metrics(register) -> None:
    for cls in (CodingRateMetric, WeightSpectraMetric, TransferProbeMetric):
        register(cls)
