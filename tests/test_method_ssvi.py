"""SSVI: counts and FLOPs (sampled and mean forward) by the formula, local reparameterisation,
the KL and its warm-up, the removal-and-addition update and its schedule, the kit."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.measure.flops import forward_flops
from lowdim_bench.measure.params import count_params
from lowdim_bench.run.train import train
from lowdim_bench.testing import check_method
from lowdim_bench_builtin.methods.ssvi import SSVIMethod, folded_snr, ssvi_layers
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
from method_helpers import ctx, mlp

DIMS = [(20, 30), (30, 7)]  # (in, out) of mlp()'s Linears


@pytest.mark.parametrize("density", [0.1, 0.5])
def test_counts_follow_the_formula(density: float) -> None:
    new = SSVIMethod().apply(mlp(), density, ctx())
    c = count_params(new)
    nnz = [math.floor(density * i * o) for i, o in DIMS]
    assert c.total == c.trainable == c.stored == sum(2 * n + o for n, (_, o) in zip(nnz, DIMS))
    for layer, n in zip(ssvi_layers(new), nnz):
        assert layer.mu.shape == layer.rho.shape == (n,)
        assert layer.indices.dtype == torch.int16 and layer.indices.numel() == n
        assert torch.all(layer.indices[1:] > layer.indices[:-1])  # sorted, distinct
    assert c.index_bytes == 2 * sum(nnz)


def test_density_one_is_dense_mean_field_vi() -> None:
    new = SSVIMethod().apply(mlp(), 1.0, ctx())
    assert count_params(new).stored == sum(2 * i * o + o for i, o in DIMS)
    assert all(layer.dense and not hasattr(layer, "indices") for layer in ssvi_layers(new))
    base = mlp()
    torch.testing.assert_close(ssvi_layers(new)[0].dense_mean(), base[0].weight.detach())  # mu_init "model"


def test_forward_flops_sampled_and_mean() -> None:
    batch, density = 5, 0.25
    new = SSVIMethod().apply(mlp(), density, ctx())
    x = torch.randn(batch, 20)
    mean = sum(2 * batch * math.floor(density * i * o) for i, o in DIMS)
    assert forward_flops(new.eval(), (x,)).executed == mean  # mean weights: one sparse product
    assert forward_flops(new.train(), (x,)).executed == 2 * mean  # sampled: mean and variance products
    assert forward_flops(new.train(), (x,)).ideal == 2 * mean
    dense = SSVIMethod().apply(mlp(), 1.0, ctx())
    assert forward_flops(dense.eval(), (x,)).executed == sum(2 * batch * i * o for i, o in DIMS)


def test_local_reparameterisation_matches_the_weight_distribution() -> None:
    layer = ssvi_layers(SSVIMethod(sigma_init=0.3).apply(mlp(), 0.5, ctx()))[0]
    x = torch.rand(1, 20)
    w_mu = layer.dense_mean()
    w_var = torch.zeros(30 * 20)
    w_var[layer.indices.long()] = layer.sigma().detach().pow(2)
    layer.train()
    torch.manual_seed(0)
    with torch.no_grad():
        ys = layer(x.expand(20000, 20))  # one noise draw per row
    bias = layer.bias.detach()
    torch.testing.assert_close(ys.mean(0), (x @ w_mu.t())[0] + bias, atol=0.03, rtol=0)
    torch.testing.assert_close(ys.var(0), (x.pow(2) @ w_var.view(30, 20).t())[0], atol=0.01, rtol=0.1)
    layer.eval()
    torch.testing.assert_close(layer(x), x @ w_mu.t() + bias)  # eval: the mean weights


def test_init_follows_the_official_code() -> None:
    layers = ssvi_layers(SSVIMethod().apply(mlp(), 0.5, ctx()))
    sigma = torch.cat([m.sigma().detach() for m in layers])
    assert 0.0003 < float(sigma.mean()) < 0.0009  # |N(0.0006, 0.0005)|
    paper = ssvi_layers(SSVIMethod(mu_init="paper").apply(mlp(), 0.5, ctx()))
    mu = torch.cat([m.mu.detach() for m in paper])
    assert float(mu.std()) == pytest.approx(0.01, rel=0.2)


def test_kl_is_the_gaussian_kl_to_the_prior() -> None:
    layer = ssvi_layers(SSVIMethod(prior_std=0.1, sigma_init=0.05).apply(mlp(), 0.3, ctx()))[0]
    expected = D.kl_divergence(D.Normal(layer.mu, layer.sigma()), D.Normal(0.0, 0.1)).sum()
    torch.testing.assert_close(layer.kl(), expected)


def test_kl_weight_warms_up_over_half_of_training() -> None:
    task = DigitsTask(hidden=32, steps=200)
    method = SSVIMethod(kl_scale=0.01)
    method.apply(task.make_model(0), 0.2, ApplyContext(seed=0, device=torch.device("cpu"), task=task))
    n = len(task.splits("target", 0)["train"])
    assert method.kl_weight(0) == pytest.approx(0.01 / n * 2 / 200)
    assert method.kl_weight(49) == pytest.approx(0.01 / n * 0.5)
    assert method.kl_weight(99) == method.kl_weight(150) == pytest.approx(0.01 / n)
    with pytest.raises(PluginError, match="n_train"):
        SSVIMethod().kl_weight(0)  # never applied: no training-set size


def test_update_schedule() -> None:
    task = DigitsTask(hidden=32, steps=400)
    method = SSVIMethod(delta=100, alpha=0.3)
    method.apply(task.make_model(0), 0.2, ApplyContext(seed=0, device=torch.device("cpu"), task=task))
    assert [s for s in range(400) if method.is_update(s)] == [99, 199]  # until 0.75 x 400 = 300
    assert method.drop_fraction(99) == pytest.approx(0.15 * (1 + math.cos(math.pi * 100 / 300)))


def test_drop_and_grow() -> None:
    method = SSVIMethod(sigma_init=0.05)
    model = method.apply(mlp(), 0.2, ctx())
    layer = ssvi_layers(model)[0]
    opt = method.configure_optimizer(model, 1e-3, 0.0)
    for p in opt.param_groups[0]["params"] + opt.param_groups[1]["params"]:
        opt.state[p] = {"exp_avg": torch.arange(p.numel(), dtype=p.dtype).view(p.shape) + 1.0}
    old_idx = layer.indices.long().clone()
    old_mu, old_rho = layer.mu.detach().clone(), layer.rho.detach().clone()
    snr = folded_snr(old_mu, layer.sigma().detach())
    n = layer.nnz
    n_prune = int(n * 0.25)
    kept = set(old_idx[snr.topk(n - n_prune).indices].tolist())
    score = torch.rand(30 * 20, generator=torch.Generator().manual_seed(0))
    layer.grow_score = score.view(30, 20).clone()
    added = layer.drop_and_grow(0.25, opt)
    new_idx = layer.indices.long()
    assert layer.nnz == n and new_idx.numel() == n and torch.all(new_idx[1:] > new_idx[:-1])
    assert kept <= set(new_idx.tolist())  # the highest-SNR entries stay
    candidates = score.clone()
    candidates[list(kept)] = -1
    grown = set(candidates.topk(n_prune).indices.tolist())
    assert set(new_idx.tolist()) == kept | grown  # the largest |grad| among the rest come in
    fresh = [i for i in new_idx.tolist() if i not in set(old_idx.tolist())]
    assert added == len(fresh) > 0
    pos = {i: j for j, i in enumerate(new_idx.tolist())}
    old_pos = {i: j for j, i in enumerate(old_idx.tolist())}
    rho_fill = old_rho[[old_pos[i] for i in kept]].mean()
    for i in fresh:  # new connections: mu 0, rho the mean of the kept, optimizer state zero
        assert float(layer.mu[pos[i]]) == 0.0
        assert float(layer.rho[pos[i]]) == pytest.approx(float(rho_fill))
        assert float(opt.state[layer.mu]["exp_avg"][pos[i]]) == 0.0
    for i in kept:  # kept entries carry their values and their state
        assert float(layer.mu[pos[i]]) == float(old_mu[old_pos[i]])
        assert float(opt.state[layer.mu]["exp_avg"][pos[i]]) == old_pos[i] + 1.0
    assert layer.grow_score is None


def test_support_is_stored_not_inferred_from_values() -> None:
    """The official code marks pruned weights by rho == 0; an active weight whose rho reaches 0
    would then vanish. Here the support is the index buffer, whatever the values are."""
    model = SSVIMethod().apply(mlp(), 0.3, ctx())
    layer = ssvi_layers(model)[0]
    with torch.no_grad():
        layer.rho[:5] = 0.0
        layer.mu[:5] = 0.0
    layer.grow_score = torch.zeros(30, 20)
    before = layer.nnz
    layer.eval()
    assert layer(torch.randn(2, 20)).shape == (2, 30) and layer.nnz == before
    assert float(layer.sigma()[0]) == pytest.approx(math.log(2))  # softplus(0): a live, wide weight


def test_rho_gets_no_weight_decay() -> None:
    method = SSVIMethod()
    model = method.apply(mlp(), 0.5, ctx())
    opt = method.configure_optimizer(model, 1e-3, 0.1)
    rhos = {id(m.rho) for m in ssvi_layers(model)}
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        assert group["weight_decay"] == (0.0 if ids <= rhos else 0.1)
        assert not ids & rhos or ids <= rhos


@pytest.mark.slow
def test_training_moves_the_support_and_learns() -> None:
    task = DigitsTask(hidden=32, steps=120, lr=1e-2, shift="none")
    method = SSVIMethod(delta=20)
    model = method.apply(task.make_model(0), 0.3, ApplyContext(seed=0, device=torch.device("cpu"), task=task))
    before = [m.indices.clone() for m in ssvi_layers(model)]
    nnz = [m.nnz for m in ssvi_layers(model)]
    splits = task.splits("target", 0)
    train(model, task, method, splits["train"], task.recipe("pretrain"), 0, torch.device("cpu"))
    assert [m.nnz for m in ssvi_layers(model)] == nnz
    assert all(not torch.equal(a, m.indices) for a, m in zip(before, ssvi_layers(model)))
    assert task.evaluate(model, splits["test"]) > 0.8


@pytest.mark.slow
def test_passes_the_conformance_kit() -> None:
    results = check_method(SSVIMethod, DigitsTask(hidden=32), size=0.25)
    assert not [str(r) for r in results if r.failed]
