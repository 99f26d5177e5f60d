"""vq-digits: the task passes the kit, exposes its quantiser slot as documented, reports codes, learns."""
from __future__ import annotations

import pytest
import torch

from lowdim_bench.api import PluginError, Recipe
from lowdim_bench.run.train import train
from lowdim_bench.testing import check_task
from lowdim_bench_builtin.metrics.codebook import CodebookMetric, code_statistics
from lowdim_bench_builtin.tasks.vq_digits import ContinuousSlot, VQAutoencoder, VQDigitsTask
from lowdim_bench.testing import measure_context


@pytest.fixture(scope="module")
def task() -> VQDigitsTask:
    return VQDigitsTask(width=8, dim=4)


def test_passes_the_task_kit(task: VQDigitsTask) -> None:
    results = check_task(task)
    assert not [str(r) for r in results if r.failed]


def test_splits_model_and_slot(task: VQDigitsTask) -> None:
    s = task.splits("target", 0)
    assert {k: tuple(v.x.shape) for k, v in s.items()} == {"train": (1078, 1, 8, 8), "val": (359, 1, 8, 8),
                                                            "test": (360, 1, 8, 8)}
    assert float(s["train"].x.max()) <= 1.0 and float(s["train"].x.min()) >= 0.0
    model = task.make_model(0)
    assert isinstance(model, VQAutoencoder) and isinstance(model.quantizer, ContinuousSlot)
    assert model.quantizer.dim == 4
    x = s["test"].x[:5]
    z = model.encoder(x)
    assert z.shape == (5, 4, 4, 4)  # a 4 x 4 grid of dim-vectors: 16 latents per image
    recon, aux, codes = model.reconstruct(x)
    assert recon.shape == x.shape and float(aux) == 0.0 and codes is None
    assert task.codes(model, s["test"]) is None  # the continuous slot has no codebook
    with pytest.raises(PluginError, match="no adapt source"):
        task.splits("source", 0)


def test_quality_is_test_mse_per_pixel(task: VQDigitsTask) -> None:
    model = task.make_model(0)
    s = task.splits("target", 0)["test"]
    with torch.no_grad():
        expected = float(((model(s.x) - s.x) ** 2).mean())
    assert task.evaluate(model, s) == pytest.approx(expected, rel=1e-5)
    assert task.quality.higher_is_better is False


def test_the_continuous_autoencoder_learns(task: VQDigitsTask) -> None:
    model = task.make_model(0)
    s = task.splits("target", 0)
    before = task.evaluate(model, s["test"])
    train(model, task, None, s["train"], Recipe(steps=60, batch_size=32, lr=3e-3), 0, torch.device("cpu"))
    assert task.evaluate(model, s["test"]) < 0.5 * before


def test_code_statistics() -> None:
    uniform = code_statistics(torch.arange(8).repeat(5), 8)
    assert uniform == pytest.approx({"utilisation": 1.0, "perplexity": 8.0, "dead_fraction": 0.0})
    one = code_statistics(torch.zeros(40, dtype=torch.long), 8)
    assert one == pytest.approx({"utilisation": 1 / 8, "perplexity": 1.0, "dead_fraction": 7 / 8})
    half = code_statistics(torch.tensor([0, 1, 0, 1]), 4)
    assert half["perplexity"] == pytest.approx(2.0) and half["utilisation"] == 0.5


def test_codebook_metric_without_a_quantiser(task: VQDigitsTask) -> None:
    out = CodebookMetric().measure(measure_context(task))
    assert [(m.metric, m.value) for m in out] == [("codebook_size", 0)]
