"""dnis and mixed-dim: learnt and frequency-rule embedding sizes on the ctr task."""
from __future__ import annotations

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.measure.params import count_params
from lowdim_bench.testing import check_method
from lowdim_bench_builtin.methods._embeddings import BlockEmbedding, frequency_blocks, solve_scale
from lowdim_bench_builtin.methods.dnis import DnisMethod, SoftSelect
from lowdim_bench_builtin.methods.mixed_dim import MixedDimMethod
from lowdim_bench_builtin.tasks.ctr import CtrTask

import pytest

SMALL = dict(n_train=3000, n_val=1000, n_test=1000, vocab=120, vocab_min=10, n_fields=4, bayes_rows=20_000,
             hidden=[16], embed_dim=8, steps=20, batch_size=64)


@pytest.fixture(scope="module")
def task():
    return CtrTask(**SMALL)


def ctx(task, seed=0):
    return ApplyContext(seed=seed, device=torch.device("cpu"), task=task, generator=torch.Generator().manual_seed(seed))


def total_features(task):
    return sum(task.vocab_sizes())


def test_frequency_blocks_are_geometric_id_ranges():
    assert frequency_blocks(1000, 4) == [0, 6, 32, 178, 1000]
    assert frequency_blocks(3, 4) == [0, 1, 2, 3]
    assert frequency_blocks(50, 1) == [0, 50]


def test_pruned_dimensions_match_the_learnt_masks(task):
    method = DnisMethod(search_steps=30, l1=1e-3)
    base = task.make_model(0)
    c = ctx(task)
    model = method.apply(base, 3, c)
    masks = method.masks(base, 3, c)
    soft = method.search(base, c)
    softs = [m for m in soft.modules() if isinstance(m, SoftSelect)]
    tables = [m for m in model.modules() if isinstance(m, BlockEmbedding)]
    assert len(tables) == len(masks) == len(softs) == len(task.vocab_sizes())
    stored = 0
    for table, mask, s in zip(tables, masks, softs):
        by_block = {blk.lo: blk for blk in table.blocks}
        for b, (lo, hi) in enumerate(zip(s.bounds[:-1], s.bounds[1:])):
            kept = mask[b].nonzero().flatten().tolist()
            assert (by_block[lo].dims.tolist() if lo in by_block else []) == kept
            stored += (hi - lo) * len(kept)
        # the pruned table computes the searched one with the unkept (block, dim) entries zeroed
        ids = torch.arange(table.num_embeddings)
        block = torch.bucketize(ids, s.inner, right=True)
        want = s(ids) * mask[block].float()
        assert torch.allclose(table(ids), want, atol=1e-7)
    assert 0 < stored <= 3 * total_features(task)
    embed = count_params(model.embed)
    assert embed.stored == stored  # values only: kept-dimension indices are int buffers
    assert embed.index_bytes == 8 * sum(len(b.dims) for t in tables for b in t.blocks)
    # every alpha entry was kept or not by its magnitude: kept ones are never smaller than dropped ones
    alphas = torch.cat([s.alpha.detach().abs().flatten() for s in softs])
    kept = torch.cat([m.flatten() for m in masks])
    assert float(alphas[kept].min()) >= float(alphas[~kept].max())


def test_alternating_search_moves_alpha_only_through_validation_and_l1(task):
    base = task.make_model(0)
    frozen = DnisMethod(search_steps=10, alpha_lr=0.0).search(base, ctx(task))
    assert all(torch.equal(m.alpha, torch.ones_like(m.alpha)) for m in frozen.modules() if isinstance(m, SoftSelect))
    weak = DnisMethod(search_steps=25, l1=0.0).search(base, ctx(task))
    strong = DnisMethod(search_steps=25, l1=0.05).search(base, ctx(task))
    mean_abs = lambda m: float(torch.cat([s.alpha.abs().flatten() for s in m.modules() if isinstance(s, SoftSelect)]).mean())
    assert mean_abs(strong) < mean_abs(weak) - 0.05
    assert not torch.equal(base.embed.tables[0].weight, next(s for s in weak.modules() if isinstance(s, SoftSelect)).weight)


def test_budget_is_monotone_and_full_knob_keeps_everything(task):
    method = DnisMethod(search_steps=10)
    base = task.make_model(0)
    counts = [count_params(method.apply(base, k, ctx(task)).embed).stored for k in range(1, 9)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert counts[-1] == total_features(task) * 8
    assert all(c <= k * total_features(task) for k, c in zip(range(1, 9), counts))


def test_dnis_refuses_a_model_without_frequency_ordered_tables(task):
    with pytest.raises(PluginError, match="ids_by_frequency"):
        DnisMethod().apply(nn.Sequential(nn.Embedding(10, 4)), 2, ctx(task))


def test_mixed_dim_widths_follow_frequency_and_uniform_is_exact(task):
    base = task.make_model(0)
    c = ctx(task)
    uniform = MixedDimMethod(temperature=0.0, n_blocks=1)
    widths = uniform.widths(base, 3, c)
    assert all(w == [3] for _, w in widths)
    model = uniform.apply(base, 3, c)
    n, d = total_features(task), 8
    assert count_params(model.embed).stored == 3 * n + len(task.vocab_sizes()) * d * 3  # tables + one projection each
    mixed = MixedDimMethod(temperature=0.5, n_blocks=4)
    for bounds, w in mixed.widths(base, 3, c):
        assert w == sorted(w, reverse=True) and w[0] > w[-1]  # frequent blocks wider
    ids = torch.arange(task.vocab_sizes()[0])
    full = MixedDimMethod(temperature=0.0).apply(base, 8, c)
    assert torch.equal(full.embed.tables[0](ids), base.embed.tables[0](ids))  # full width: the fresh model


def test_solve_scale_meets_the_budget():
    costs = [(5, 0.1), (20, 0.01), (200, 0.001)]
    dims = solve_scale(costs, budget=4 * 225, dim=16, temperature=0.4)
    assert sum(v * d for (v, _), d in zip(costs, dims)) <= 4 * 225
    assert dims[0] >= dims[1] >= dims[2]


@pytest.mark.slow
def test_kit_passes_for_dnis_and_mixed_dim():
    t = CtrTask(**SMALL)
    for cls, hp in ((DnisMethod, {"search_steps": 10}), (MixedDimMethod, {}), (MixedDimMethod, {"temperature": 0.0})):
        failed = [str(r) for r in check_method(cls, t, **hp) if r.failed]
        assert not failed, failed
