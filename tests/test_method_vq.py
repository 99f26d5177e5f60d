"""vq, vq-ema and simvq: counts and FLOPs by the formula, nearest-code search, the losses and the
EMA update as the papers state them, SimVQ's frozen codebook and its decode path, the kit."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.measure.flops import forward_flops
from lowdim_bench.measure.params import count_params
from lowdim_bench.testing import check_method, measure_context
from lowdim_bench_builtin.methods.vq import (EMAQuantiser, FixedCodebookQuantiser, SimVQMethod, SimVQQuantiser,
                                             VQEMAMethod, VQMethod, VQQuantiser, nearest)
from lowdim_bench_builtin.metrics.codebook import CodebookMetric
from lowdim_bench_builtin.tasks.vq_digits import VQDigitsTask

K, D, B = 64, 4, 3
LATENTS = B * 16  # a 4 x 4 grid per image


@pytest.fixture(scope="module")
def task() -> VQDigitsTask:
    return VQDigitsTask(width=8, dim=D)


def applied(method, task: VQDigitsTask, k: int = K):
    ctx = ApplyContext(seed=0, device=torch.device("cpu"), task=task)
    return method.apply(task.make_model(0), k, ctx)


def test_counts_follow_the_formula(task: VQDigitsTask) -> None:
    base = count_params(task.make_model(0))
    vq = count_params(applied(VQMethod(), task))
    assert vq.trainable == vq.stored == base.total + K * D
    ema = count_params(applied(VQEMAMethod(), task))
    assert ema.trainable == base.total and ema.stored == base.total + K * D + K + K * D  # codebook + EMA state
    sim = count_params(applied(SimVQMethod(), task))
    assert sim.trainable == base.total + D * D + D  # only the Linear W trains
    assert sim.stored == base.total + K * D + D * D + D


def test_forward_flops_follow_the_formula(task: VQDigitsTask) -> None:
    x = task.example_inputs(B, torch.device("cpu"))
    base = forward_flops(task.make_model(0).eval(), x).executed
    search = 2 * LATENTS * K * D  # the distance product z C^T
    assert forward_flops(applied(VQMethod(), task).eval(), x).executed == base + search
    assert forward_flops(applied(VQEMAMethod(), task).eval(), x).executed == base + search
    method = SimVQMethod()
    sim = applied(method, task).eval()
    assert forward_flops(sim, x).executed == base + search + 2 * K * D * D  # plus C W^T once per call
    deployed = method.for_inference(copy.deepcopy(sim))
    assert isinstance(deployed.quantizer, FixedCodebookQuantiser)
    assert forward_flops(deployed, x).executed == base + search
    torch.testing.assert_close(deployed(*x), sim(*x))


def test_nearest_code_is_the_argmin_distance() -> None:
    g = torch.Generator().manual_seed(0)
    z, book = torch.randn(50, D, generator=g), torch.randn(K, D, generator=g)
    assert torch.equal(nearest(z, book), torch.cdist(z, book).argmin(1))


def test_vq_loss_and_straight_through() -> None:
    g = torch.Generator().manual_seed(0)
    q = VQQuantiser(K, D, 0.25, g)
    bound = 1.0 / K
    assert float(q.embedding.abs().max()) <= bound  # U(-1/K, 1/K), the VQ-VAE / taming init
    z = torch.randn(10, D, requires_grad=True)
    out, aux, codes = q(z)
    target = q.embedding[codes]
    torch.testing.assert_close(aux, 1.25 * F.mse_loss(z.detach(), target.detach()))
    torch.testing.assert_close(out, target)  # the forward value is the code
    (out.sum() + aux).backward()
    # straight-through: d out / d z = I; commitment adds 2 beta (z - q) / numel
    torch.testing.assert_close(z.grad, torch.ones_like(z) + 0.25 * 2 * (z - target).detach() / z.numel())
    assert q.embedding.grad is not None and q.embedding.grad.abs().sum() > 0  # codebook term reaches C


def test_ema_update_is_sonnets_debiased_average() -> None:
    g = torch.Generator().manual_seed(0)
    q = EMAQuantiser(5, D, 0.25, 0.9, 1e-5, g)
    limit = (3 / D) ** 0.5
    assert float(q.embedding.abs().max()) <= limit  # VarianceScaling(uniform) over d
    q.embedding.copy_(torch.cat([torch.eye(4)[:, :D] * 10, torch.full((1, D), 50.0)]))
    old = q.embedding.clone()
    z = torch.eye(4)[:, :D].repeat(5, 1) * 9 + 0.1 * torch.randn(20, D, generator=g)  # 5 latents near codes 0-3
    out, aux, codes = q(z)
    assert torch.equal(torch.bincount(codes, minlength=5), torch.tensor([5, 5, 5, 5, 0]))
    torch.testing.assert_close(out, old[codes])  # quantised with the codebook before the update
    torch.testing.assert_close(aux, 0.25 * F.mse_loss(z, old[codes]))
    # one update, debiased: the counts and sums of this batch; each used code at its latents' mean
    means = torch.stack([z[codes == c].mean(0) for c in range(4)])
    torch.testing.assert_close(q.embedding[:4], means, atol=1e-4, rtol=1e-4)
    assert torch.equal(q.embedding[4], torch.zeros(D))  # an unused code is reset to 0, as Sonnet's
    _, _, codes2 = q(z)
    torch.testing.assert_close(q.cluster_hidden / (1 - 0.9 ** 2), torch.tensor([5.0, 5, 5, 5, 0]))
    assert int(q.updates) == 2
    assert not any(p.requires_grad for p in q.parameters())  # no codebook gradient at all
    q.eval()
    frozen = q.embedding.clone()
    q(z)
    assert torch.equal(q.embedding, frozen)  # eval never updates


def test_simvq_codebook_is_frozen_and_reparameterised() -> None:
    g = torch.Generator().manual_seed(0)
    q = SimVQQuantiser(2048, 16, 0.25, g)
    assert "frozen" in dict(q.named_buffers()) and not q.frozen.requires_grad
    assert float(q.frozen.std()) == pytest.approx(16 ** -0.5, rel=0.05)  # N(0, d^-1/2)
    torch.testing.assert_close(q.codebook(), q.frozen @ q.proj.weight.t() + q.proj.bias)
    z = torch.randn(30, 16, requires_grad=True)
    out, aux, codes = q(z)
    assert torch.equal(codes, nearest(z.detach(), q.codebook().detach()))  # search over C W, not C
    book = q.codebook().detach()
    torch.testing.assert_close(aux, 0.25 * F.mse_loss(z.detach(), book[codes]) + F.mse_loss(book[codes], z.detach()))
    aux.backward()
    assert q.proj.weight.grad.abs().sum() > 0  # the codebook loss trains W


def test_simvq_decodes_codes_through_the_transformed_codebook() -> None:
    """Official pitfall: decoding from indices reads the raw codebook C instead of C W."""
    g = torch.Generator().manual_seed(0)
    q = SimVQQuantiser(K, D, 0.25, g)
    with torch.no_grad():
        q.proj.weight.mul_(3.0)  # W far from identity, as after training
    z = torch.randn(20, D)
    out, _, codes = q(z)
    torch.testing.assert_close(q.decode(codes), out)
    assert not torch.allclose(q.decode(codes), q.frozen[codes])
    fixed = FixedCodebookQuantiser(q.codebook(), 0.25)
    torch.testing.assert_close(fixed.decode(codes), out)


def test_applies_to_the_named_slot_only(task: VQDigitsTask) -> None:
    base = task.make_model(0)
    new = applied(VQMethod(), task)
    assert isinstance(new.quantizer, VQQuantiser) and new.quantizer.codebook_size == K
    assert torch.equal(new.encoder[0].weight, base.encoder[0].weight)
    with pytest.raises(PluginError, match="quantiser slot"):
        VQMethod().apply(torch.nn.Linear(3, 3), K, ApplyContext(seed=0, device=torch.device("cpu"), task=task))
    with pytest.raises(PluginError, match="codebook_size"):
        applied(VQMethod(), task, 1)


def test_codebook_metric_on_a_quantiser(task: VQDigitsTask) -> None:
    model = applied(SimVQMethod(), task).eval()
    ctx = measure_context(task)
    ctx.model = ctx.inference_model = model
    out = {m.metric: m.value for m in CodebookMetric().measure(ctx)}
    codes, size = task.codes(model, task.splits("target", 0)["test"])
    assert codes.shape == (360 * 16,) and size == K
    assert out["codebook_size"] == K
    assert out["codebook_utilisation"] == pytest.approx(len(codes.unique()) / K)
    assert 1.0 <= out["codebook_perplexity"] <= K
    assert out["codebook_dead_fraction"] == pytest.approx(1 - out["codebook_utilisation"])


@pytest.mark.slow
@pytest.mark.parametrize("cls", [VQMethod, VQEMAMethod, SimVQMethod])
def test_passes_the_conformance_kit(cls, task: VQDigitsTask) -> None:
    results = check_method(cls, task, size=K)
    assert not [str(r) for r in results if r.failed]
