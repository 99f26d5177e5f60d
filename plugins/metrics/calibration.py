"""Calibration of a classifier: expected calibration error (ECE) and negative log-likelihood (NLL).

Reusable for any classification task: it reads `Task.predictions(model, split)` (logits and
labels over a whole split) on the cell's test split (`MeasureContext.splits["test"]`). A task
that is not a classification task (predictions() returns None) gets no calibration records.

ECE (Guo et al. 2017): confidences are the top-class softmax probabilities, cut into 15
equal-width bins over [0, 1]; ECE = sum over bins of (bin size / n) x |accuracy - mean
confidence|. Why equal width and 15: the common definition, so figures compare with papers.
(SSVI's official code reports Kumar et al.'s debiased top-label L2 error instead; we report the
common L1 form and say so in docs.) NLL is the mean cross-entropy of the logits, in nats.
The model is measured as deployed (`inference_model`, eval mode: a Bayesian layer uses its mean).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowdim_bench.api import Measurement, MeasureContext, Metric, PluginError
from lowdim_bench.hookspecs import hookimpl

N_BINS = 15


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> float:
    """L1 ECE with `n_bins` equal-width confidence bins; a bin's upper edge is inclusive."""
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise PluginError(f"calibration: expected logits (n, classes) and labels (n,), got "
                          f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    probs = F.softmax(logits.double(), dim=-1)
    conf, pred = probs.max(dim=-1)
    correct = (pred == labels).double()
    # bin b holds confidences in (b/n, (b+1)/n]; confidence 0 cannot occur for a softmax
    bins = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, n_bins - 1)
    n = conf.numel()
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.sum() / n * (correct[sel].mean() - conf[sel].mean()).abs()
    return float(ece)


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.double(), labels))


class CalibrationMetric(Metric):
    name = "calibration"
    description = "ECE (15 equal-width bins, L1) and NLL (nats) of a classifier on the test split (Task.predictions)."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        split = ctx.splits.get("test")
        if split is None:
            raise PluginError("metric 'calibration' needs the cell's test split in MeasureContext.splits['test'] "
                              "(filled by the harness since core v2)")
        out = ctx.task.predictions(ctx.inference_model.eval(), split)
        if out is None:
            return []  # not a classification task: nothing to calibrate
        logits, labels = (t.detach().cpu() for t in out)
        return [Measurement("ece", expected_calibration_error(logits, labels), "fraction", higher_is_better=False),
                Measurement("nll", negative_log_likelihood(logits, labels), "nats", higher_is_better=False)]


@hookimpl
def register_metrics(register) -> None:
    register(CalibrationMetric)
