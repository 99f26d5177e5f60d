"""Task.features and the representation metrics (coding-rate, weight-spectra, transfer-probe)."""
import copy

import pytest
import torch

from lowdim_bench.testing import check_metric, measure_context
from lowdim_bench_builtin.methods.lora import LoraMethod
from lowdim_bench_builtin.metrics.representation import CodingRateMetric, TransferProbeMetric, WeightSpectraMetric
from lowdim_bench_builtin.tasks.digits_cnn import DigitsCnnTask
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
from lowdim_bench_builtin.tasks.stdlib_lm import FEATURE_WINDOWS, StdlibLM
from method_helpers import ctx


def by_name(measurements):
    return {(m.metric, m.phase): m for m in measurements}


def test_digits_features_are_the_head_input():
    task = DigitsTask(hidden=32)
    model = task.make_model(0)
    split = task.splits("target", 0)["test"]
    z, y = task.features(model, split)
    assert z.shape == (len(split), 32) and torch.equal(y, split.y)
    with torch.no_grad():
        assert torch.allclose(z, model.body(split.x), atol=1e-6)


def test_cnn_features_are_the_pooled_channels():
    task = DigitsCnnTask(width=8, groups=2)
    model = task.make_model(0)
    split = task.splits("target", 0)["val"]
    z, y = task.features(model, split)
    assert z.shape == (len(split), 16) and len(y) == len(split)
    with torch.no_grad():
        logits = model(split.x)
    assert torch.allclose(z @ model.head.weight.T + model.head.bias, logits, atol=1e-5)


def test_lm_features_are_tokens_with_next_byte_labels():
    task = StdlibLM(d_model=32, n_layers=1, n_heads=2, d_ff=64, context=16, eval_windows=64, max_corpus_bytes=50_000)
    model = task.make_model(0)
    z, y = task.features(model, task.splits("target", 0)["test"])
    assert z.shape == (FEATURE_WINDOWS * 16, 32) and y.shape == (FEATURE_WINDOWS * 16,)
    assert y.dtype == torch.int64 and int(y.max()) < 256


def test_features_read_through_a_wrapped_head():
    task = DigitsTask(hidden=32)
    base = task.make_model(0)
    lora = LoraMethod().apply(base, 2, ctx())  # the head is a LoraLayer now, at the same name
    split = task.splits("target", 0)["test"]
    assert torch.allclose(task.features(lora, split)[0], task.features(base, split)[0], atol=1e-6)


def context_with_base(task, model, base):
    mctx = measure_context(task)
    mctx.model = model
    mctx.base_model = base
    mctx.splits = task.splits("target", 0)
    return mctx


def test_coding_rate_metric_records_eps_d_m_and_cka_to_base():
    task = DigitsTask(hidden=32)
    base = task.make_model(0)
    out = by_name(CodingRateMetric().measure(context_with_base(task, copy.deepcopy(base), base)))
    assert out[("coding_rate_d", None)].value == 32 and out[("coding_rate_m", None)].value == 360
    assert out[("coding_rate_eps", None)].value == pytest.approx(0.5 ** 0.5)
    r, rc, dr = (out[(k, None)].value for k in ("coding_rate_R", "coding_rate_Rc", "coding_rate_dR"))
    assert dr == pytest.approx(r - rc) and r > 0 and rc > 0
    assert out[("feature_cka_to_base", None)].value == pytest.approx(1.0)  # unchanged model
    assert out[("coding_rate_dR", "base")].value == pytest.approx(dr)
    other = task.make_model(1)
    moved = by_name(CodingRateMetric().measure(context_with_base(task, other, base)))
    assert moved[("feature_cka_to_base", None)].value < 0.99


def test_weight_spectra_see_a_lora_update_through_its_wrapper():
    task = DigitsTask(hidden=32)
    base = task.make_model(0)
    model = LoraMethod(target_modules=["body.0"]).apply(base, 2, ctx())
    with torch.no_grad():
        model.body[0].lora_B.weight.normal_(generator=torch.Generator().manual_seed(0))
    out = by_name(WeightSpectraMetric().measure(context_with_base(task, model, base)))
    assert out[("layers_updated", None)].value == 1
    assert out[("update_erank.body.0", None)].value <= 2 + 1e-6
    assert out[("update_sv.body.0", "sv3")].value < 1e-4  # rank 2: the third singular value is zero
    assert 0 < out[("update_top8_share.body.0", None)].value <= 1
    assert out[("update_top8_random.body.0", None)].value == pytest.approx((8 / 32) * (8 / 64))
    assert ("update_erank.body.2", None) not in out  # untouched layers are not "adapted"


def test_transfer_probe_scores_the_source_stage():
    task = DigitsTask(hidden=32)
    out = by_name(TransferProbeMetric().measure(measure_context(task)))
    acc = out[("transfer_probe_accuracy", "source")]
    assert 0.5 < acc.value <= 1.0 and acc.higher_is_better is True  # digits are linearly separable-ish
    assert out[("transfer_probe_error", "source")].value == pytest.approx(1 - acc.value)


@pytest.mark.parametrize("metric", [CodingRateMetric, WeightSpectraMetric, TransferProbeMetric])
def test_metric_kit(metric):
    assert not check_metric(metric, DigitsTask(hidden=32))[0].failed
