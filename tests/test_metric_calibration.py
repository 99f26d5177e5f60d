"""Calibration metric: ECE and NLL by their definitions, read from Task.predictions on the test split."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowdim_bench.api import PluginError
from lowdim_bench.testing import check_metric, measure_context
from lowdim_bench_builtin.metrics.calibration import (CalibrationMetric, expected_calibration_error,
                                                      negative_log_likelihood)
from lowdim_bench_builtin.tasks.digits_cnn import DigitsCnnTask
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
from lowdim_bench_builtin.tasks.vq_digits import VQDigitsTask


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_ece_by_hand() -> None:
    # confidences 0.9 (one right, one wrong) and 0.6 (both right): |0.5 - 0.9| / 2 + |1 - 0.6| / 2
    logits = logits_of([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.4)
    assert expected_calibration_error(logits, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.1 / 2 + 0.4 / 2)


def numpy_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Independent reference: equal-width bins (lo, hi], as in Guo et al.'s code."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs((pred[sel] == labels[sel]).mean() - conf[sel].mean())
    return total


def test_ece_matches_an_independent_implementation() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    labels = torch.randint(0, 10, (500,), generator=g)
    probs = F.softmax(logits.double(), -1).numpy()
    assert expected_calibration_error(logits, labels) == pytest.approx(numpy_ece(probs, labels.numpy()), abs=1e-9)
    assert negative_log_likelihood(logits, labels) == pytest.approx(float(F.cross_entropy(logits.double(), labels)))


def test_a_calibrated_predictor_has_small_ece() -> None:
    g = torch.Generator().manual_seed(1)
    n = 20000
    conf = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)  # binary, top prob in [0.5, 1]
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
    labels = torch.where(correct, 0, 1)
    logits = torch.stack([conf.log(), (1 - conf).clamp_min(1e-12).log()], 1)
    assert expected_calibration_error(logits, labels) < 0.02
    overconfident = torch.stack([(conf * 0 + 0.999).log(), torch.full((n,), math.log(0.001))], 1)
    assert expected_calibration_error(overconfident, labels) > 0.2


def test_rejects_bad_shapes() -> None:
    with pytest.raises(PluginError, match="expected logits"):
        expected_calibration_error(torch.zeros(4), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("task", [DigitsTask(hidden=16), DigitsCnnTask(width=4, groups=1)], ids=lambda t: t.name)
def test_predictions_cover_the_split(task) -> None:
    model = task.make_model(0)
    split = task.splits("target", 0)["test"]
    logits, labels = task.predictions(model, split)
    assert logits.shape == (len(split), 10) and torch.equal(labels, split.y)
    accuracy = float((logits.argmax(1) == labels).double().mean())
    assert accuracy == pytest.approx(task.evaluate(model, split))
    assert model.training  # restored


def test_metric_reads_the_test_split() -> None:
    task = DigitsTask(hidden=16)
    ctx = measure_context(task)
    out = {m.metric: m for m in CalibrationMetric().measure(ctx)}
    logits, labels = task.predictions(ctx.inference_model, ctx.splits["test"])
    assert out["ece"].value == pytest.approx(expected_calibration_error(logits, labels))
    assert out["nll"].value == pytest.approx(negative_log_likelihood(logits, labels))
    assert out["ece"].unit == "fraction" and out["nll"].unit == "nats"
    assert out["ece"].higher_is_better is False and out["nll"].higher_is_better is False


def test_metric_needs_the_splits_and_skips_non_classifiers() -> None:
    ctx = measure_context(DigitsTask(hidden=16))
    ctx.splits = {}
    with pytest.raises(PluginError, match=r"MeasureContext.splits\['test'\]"):
        CalibrationMetric().measure(ctx)
    assert CalibrationMetric().measure(measure_context(VQDigitsTask(width=4, dim=2))) == []


def test_passes_the_metric_kit() -> None:
    assert not [str(r) for r in check_metric(CalibrationMetric) if r.failed]
