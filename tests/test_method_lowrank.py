"""lowrank: W = B A with both factors live at init; counts, init scale, gradients at step 0, and
that it learns (beats a count bigram on stdlib-lm) where sltrain with delta = 0 sits on a saddle."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError, Recipe
from lowdim_bench.measure.flops import forward_flops
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run.train import train
from lowdim_bench_builtin.methods import lowrank as lowrank_module
from lowdim_bench_builtin.methods.lowrank import LowRankLinear, LowRankMethod, spectral_factors
from lowdim_bench_builtin.methods.sltrain import SLTrainMethod
from lowdim_bench_builtin.tasks.stdlib_lm import StdlibLM, eval_starts

CPU = torch.device("cpu")


def ctx(task=None, seed: int = 0) -> ApplyContext:
    return ApplyContext(seed=seed, device=CPU, task=task)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 7))


def lm_task() -> StdlibLM:
    return StdlibLM(d_model=64, n_layers=2, n_heads=4, d_ff=128, context=64, max_corpus_bytes=200_000,
                    eval_windows=64)


def test_registers_and_counts_r_times_m_plus_n_per_body_layer() -> None:
    assert Registry.from_objects({"lowrank": lowrank_module}).method("lowrank").cls is LowRankMethod
    base, r = mlp(), 3
    new = LowRankMethod().apply(base, r, ctx())
    assert isinstance(new[0], LowRankLinear) and isinstance(new[2], LowRankLinear) and isinstance(new[4], nn.Linear)
    body = r * (20 + 30) + 30 + r * (30 + 40) + 40
    head = 40 * 7 + 7
    assert count_params(new).stored == body + head == count_params(new).trainable
    x = torch.randn(5, 20)
    assert forward_flops(new, (x,)).executed == 2 * 5 * (r * 50 + r * 70 + 40 * 7)
    assert LowRankMethod().knob_range(base) == (1, 30)


def test_spectral_init_is_the_rescaled_best_fit_of_the_dense_init() -> None:
    w = nn.Linear(30, 40).weight.detach()
    b, a = spectral_factors(w, 5, rescale=False)
    u, s, vh = torch.linalg.svd(w.double())
    torch.testing.assert_close(b @ a, (u[:, :5] * s[:5]) @ vh[:5])
    b, a = spectral_factors(w, 5, rescale=True)
    torch.testing.assert_close((b @ a).norm(), w.double().norm())  # the dense init's scale
    new = LowRankMethod(init="random").apply(mlp(), 4, ctx())
    ratio = float(new[2].weight.detach().std() / mlp()[2].weight.detach().std())
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize("init", ["spectral", "random"])
def test_both_factors_get_gradients_at_step_zero(init: str) -> None:
    task = lm_task()
    model = LowRankMethod(init=init).apply(task.make_model(0), 8, ctx(task))
    batch = task.example_batch(4, CPU)
    task.loss(model, batch).backward()
    layers = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert len(layers) == 2 * 7  # wq wk wv wo gate up down per block; head and embedding dense
    for layer in layers:
        assert layer.A.grad.abs().sum() > 0 and layer.B.grad.abs().sum() > 0
    # the saddle lowrank replaces: sltrain without its sparse part has all-zero factor gradients
    saddle = SLTrainMethod(delta=0.0).apply(task.make_model(0), 8, ctx(task))
    task.loss(saddle, batch).backward()
    grads = [p.grad for n, p in saddle.named_parameters() if n.endswith((".A", ".B"))]
    assert grads and all(g is None or float(g.abs().sum()) == 0.0 for g in grads)


def bigram_bits_per_byte(task: StdlibLM) -> float:
    """A count bigram (add-one) fitted on the training split, scored on the task's test windows."""
    splits = task.splits("target", 0)
    tr, te = splits["train"].data.long(), splits["test"].data.long()
    counts = torch.ones(256, 256, dtype=torch.float64)
    counts.index_put_((tr[:-1], tr[1:]), torch.ones(len(tr) - 1, dtype=torch.float64), accumulate=True)
    logp = (counts / counts.sum(1, keepdim=True)).log2()
    starts = eval_starts(len(te), task.context, int(task.options["eval_windows"]))
    chunk = te[starts[:, None] + torch.arange(task.context + 1)[None]]
    return float(-logp[chunk[:, :-1], chunk[:, 1:]].mean())


@pytest.mark.slow  # trains a small byte LM for 120 steps (~10 s)
def test_lowrank_learns_and_beats_a_bigram_on_stdlib_lm() -> None:
    task = lm_task()
    splits = task.splits("target", 0)
    torch.manual_seed(0)
    model = LowRankMethod().apply(task.make_model(0), 8, ctx(task))
    before = task.evaluate(model, splits["test"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: more threads than this only fight over a loaded machine
    try:
        train(model, task, None, splits["train"], Recipe(steps=120, batch_size=16, lr=3e-3), 0, CPU)
    finally:
        torch.set_num_threads(threads)
    after, bigram = task.evaluate(model, splits["test"]), bigram_bits_per_byte(task)
    assert after < bigram < before, (after, bigram, before)


def test_bad_settings_are_errors() -> None:
    with pytest.raises(PluginError, match="init"):
        LowRankMethod(init="zeros")
    with pytest.raises(PluginError, match="no Linear left"):
        LowRankMethod().apply(nn.Sequential(nn.Linear(3, 2)), 1, ctx())
