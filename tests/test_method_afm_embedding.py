"""afm and svd on embedding tables (`embeddings = true`): exactness, folding into the consumer
Linear, honest counts, unchanged behaviour by default, and the conformance kit."""
from __future__ import annotations

import copy

import pytest
import torch

from lowdim_bench.api import ApplyContext
from lowdim_bench.measure.params import count_params
from lowdim_bench.testing import check_method
from lowdim_bench_builtin.methods._embedding_factors import LowRankEmbedding
from lowdim_bench_builtin.methods.afm import AfmMethod
from lowdim_bench_builtin.methods.svd import SvdMethod
from lowdim_bench_builtin.tasks.ctr import CtrTask
from lowdim_bench.testing.subject import perturb_

SMALL = dict(n_train=2000, n_val=500, n_test=1000, vocab=100, vocab_min=10, n_fields=4, bayes_rows=20_000,
             hidden=[32, 16], embed_dim=8, steps=20, batch_size=64, att_layers=1, att_units=8)


def setup(arch="mlp"):
    task = CtrTask(arch=arch, **SMALL)
    model = perturb_(task.make_model(0), 0, 5.0).eval()  # a "trained" base: distinct, non-constant tables
    split = task.splits("target", 0)["train"]

    def calibration():
        g = torch.Generator().manual_seed(1)
        it = task.batches(split, 256, g)
        for _ in range(8):
            yield task.model_inputs(next(it))

    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=task, calibration=calibration)
    x = task.splits("target", 0)["test"].x[:500]
    return task, model, ctx, x


@pytest.mark.parametrize("arch", ["mlp", "autoint"])
def test_afm_on_tables_is_exact_at_full_k(arch):
    task, model, ctx, x = setup(arch)
    method = AfmMethod(embeddings=True, skip_above_break_even=False, skip_modules=["head"])
    lo, hi = method.knob_range(model)
    out = method.apply(model, hi, ctx)
    assert torch.allclose(out(x), model(x), atol=1e-4, rtol=1e-4)
    kinds = {type(m).__name__ for m in out.embed.tables}
    assert kinds == ({"Embedding"} if arch == "mlp" else {"LowRankEmbedding"})  # folded vs explicit map


def test_afm_table_factor_is_mu_plus_projection_and_folding_changes_nothing():
    task, model, ctx, x = setup("mlp")
    k = 3
    folded = AfmMethod(embeddings=True, skip_modules=["body.0", "body.2", "head"]).apply(model, k, ctx)
    # reference: each table replaced by its reconstruction mu + U U^T (E - mu), the Linear untouched
    ref = copy.deepcopy(model)
    for f, table in enumerate(model.embed.tables):
        ys = []
        for inputs in ctx.calibration():
            ys.append(table(inputs.args[0][:, f]).double())
        y = torch.cat(ys)
        mu = y.mean(0)
        evals, evecs = torch.linalg.eigh(((y - mu).t() @ (y - mu)) / len(y))
        u = evecs.flip(1)[:, :k]
        rec = mu + (table.weight.double() - mu) @ u @ u.t()
        with torch.no_grad():
            ref.embed.tables[f].weight.copy_(rec.float())
    assert torch.allclose(folded(x), ref(x), atol=1e-4)
    assert folded.body[0].in_features == k * len(task.vocab_sizes())
    assert all(t.embedding_dim == k for t in folded.embed.tables)


def test_afm_counts_are_the_folded_closed_form():
    task, model, ctx, _ = setup("mlp")
    k, sizes, h = 3, task.vocab_sizes(), 32
    out = AfmMethod(embeddings=True, skip_modules=["body.0", "body.2", "head"]).apply(model, k, ctx)
    want = sum(sizes) * k + (len(sizes) * k * h + h) + (h * 16 + 16) + (16 + 1)
    c = count_params(out)
    assert (c.stored, c.stored_bytes, c.index_bytes) == (want, 4 * want, 0)
    assert count_params(out.embed).stored == sum(sizes) * k


def test_afm_and_svd_leave_tables_alone_by_default():
    task, model, ctx, x = setup("mlp")
    for method in (AfmMethod(), SvdMethod()):
        lo, hi = method.knob_range(model)
        out = method.apply(model, 2, ctx)
        assert all(type(t) is torch.nn.Embedding and t.embedding_dim == 8 for t in out.embed.tables)
        assert torch.equal(out.embed.tables[0].weight, model.embed.tables[0].weight)


@pytest.mark.parametrize("arch", ["mlp", "autoint"])
def test_svd_on_tables_is_exact_at_full_rank_and_counts_codes(arch):
    task, model, ctx, x = setup(arch)
    method = SvdMethod(embeddings=True, skip_above_break_even=False, target_modules=["head"])
    out = method.apply(model, 8, ctx)
    assert torch.allclose(out(x), model(x), atol=1e-4, rtol=1e-4)
    small = SvdMethod(embeddings=True, target_modules=["head"]).apply(model, 2, ctx)
    sizes = task.vocab_sizes()
    per_table = [count_params(t).stored for t in small.embed.tables]
    if arch == "mlp":
        assert per_table == [v * 2 for v in sizes]
        assert small.body[0].in_features == 2 * len(sizes)
    else:
        assert per_table == [v * 2 + 2 * 8 for v in sizes]  # codes and the explicit 2 -> 8 map
        assert all(isinstance(t, LowRankEmbedding) for t in small.embed.tables)


def test_svd_tables_are_the_truncated_svd():
    task, model, ctx, _ = setup("autoint")
    out = SvdMethod(embeddings=True, target_modules=["head"]).apply(model, 2, ctx)
    w = model.embed.tables[3].weight.double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    got = out.embed.tables[3](torch.arange(w.shape[0])).double()
    assert torch.allclose(got, best, atol=1e-5)


@pytest.mark.slow
def test_kit_passes_for_afm_and_svd_on_tables():
    task = CtrTask(**SMALL)
    for cls in (AfmMethod, SvdMethod):
        failed = [str(r) for r in check_method(cls, task, embeddings=True) if r.failed]
        assert not failed, failed
    auto = CtrTask(arch="autoint", **{k: v for k, v in SMALL.items()})
    failed = [str(r) for r in check_method(AfmMethod, auto, embeddings=True) if r.failed]
    assert not failed, failed
