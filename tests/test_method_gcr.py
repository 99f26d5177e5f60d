"""GCR: the Grassmann class head, its Riemannian optimizer, and the softmax-head reference."""
import math

import pytest
import torch
from torch import nn

from lowdim_bench.api import PluginError
from lowdim_bench.measure.params import count_params
from lowdim_bench.run.train import lr_factor, make_optimizer, train
from lowdim_bench.testing import check_method
from lowdim_bench_builtin.methods._grassmann import (GcrOptimizer, geodesic_step, orthonormalise, orthonormality_error,
                                                     project_tangent)
from lowdim_bench_builtin.methods._heads import find_head
from lowdim_bench_builtin.methods.gcr import GcrMethod, GrassmannHead
from lowdim_bench_builtin.methods.softmax_head import PrototypeHead, SoftmaxHeadMethod
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
from method_helpers import ctx, mlp


@pytest.fixture(scope="module")
def task():
    return DigitsTask(hidden=32)


def test_logit_is_gamma_times_projection_norm():
    gen = torch.Generator().manual_seed(0)
    head = GrassmannHead(6, 3, 2, 25.0, gen)
    x = torch.randn(4, 6)
    xn = x / x.norm(dim=1, keepdim=True)
    want = torch.stack([25.0 * (head.bases[c].T @ xn.T).norm(dim=0) for c in range(3)], 1)
    assert torch.allclose(head(x), want, atol=1e-5)
    assert torch.allclose(head(3.0 * x), head(x), atol=1e-5)  # scale of the feature does not matter
    assert orthonormality_error(head.bases) < 1e-6
    assert float(head(x).detach().max()) <= 25.0 + 1e-4  # a projection is never longer than the vector


def test_apply_replaces_the_head_and_counts_ckd(task):
    base = task.make_model(0)
    model = GcrMethod().apply(base, 8, ctx())
    assert isinstance(model.head, GrassmannHead) and isinstance(base.head, nn.Linear)
    body = sum(p.numel() for p in base.body.parameters())
    assert count_params(model).total == body + 10 * 8 * 32  # C k d, no bias
    assert all(p.requires_grad for p in model.parameters())  # the body fine-tunes too
    assert model(torch.rand(5, 64)).shape == (5, 10)


def test_find_head_rules():
    assert find_head(mlp(), "auto", "m")[0] == "2"  # no named head: the last Linear
    model = nn.Sequential()
    model.add_module("classifier", nn.Linear(4, 2))
    model.add_module("out", nn.Linear(2, 2))
    with pytest.raises(PluginError, match="several layers look like the head"):
        find_head(model, "auto", "gcr")
    assert find_head(model, "out", "gcr")[0] == "out"
    with pytest.raises(PluginError, match="matches 0"):
        find_head(model, "nope", "gcr")
    tied = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    tied[1].weight = tied[0].weight
    with pytest.raises(PluginError, match="tied"):
        find_head(tied, "auto", "gcr")


def test_bad_hyperparameters_are_named():
    with pytest.raises(PluginError, match="momentum"):
        GcrMethod(momentum=1.0)
    with pytest.raises(PluginError, match="k must be in 1..32"):
        GcrMethod().apply(DigitsTask(hidden=32).make_model(0), 33, ctx())


def test_geodesic_step_stays_on_the_manifold_and_descends():
    gen = torch.Generator().manual_seed(0)
    w = orthonormalise(torch.randn(3, 10, 4, generator=gen, dtype=torch.float64))
    target = orthonormalise(torch.randn(3, 10, 4, generator=gen, dtype=torch.float64))

    def loss(v):  # -||target^T v||^2: maximise the overlap of the subspaces
        return -((target.transpose(-1, -2) @ v) ** 2).sum()

    v = w.clone().requires_grad_(True)
    loss(v).backward()
    h = project_tangent(w, v.grad)
    assert float((w.transpose(-1, -2) @ h).abs().max()) < 1e-12  # tangent: W^T H = 0
    stepped = geodesic_step(w, h, 0.01)
    assert orthonormality_error(stepped) < 1e-12
    assert float(loss(stepped)) < float(loss(w))
    assert torch.allclose(geodesic_step(w, h, 0.0), w, atol=1e-12)


def test_geodesic_step_moves_by_the_step_times_the_gradient_norm():
    """A geodesic of speed ||H||: after eta the principal angle is eta * sigma (k = 1, small eta)."""
    w = torch.zeros(1, 5, 1, dtype=torch.float64)
    w[0, 0, 0] = 1.0
    h = torch.zeros(1, 5, 1, dtype=torch.float64)
    h[0, 1, 0] = 2.0
    out = geodesic_step(w, h, 0.1)
    assert float(out[0, 0, 0]) == pytest.approx(math.cos(0.2))
    assert float(out[0, 1, 0]) == pytest.approx(-math.sin(0.2))


def test_optimizer_groups_no_decay_on_the_head_and_shared_schedule(task):
    model = GcrMethod().apply(task.make_model(0), 4, ctx())
    opt = make_optimizer(model, GcrMethod(head_lr_ratio=2.0), 0.01, 0.1)
    assert isinstance(opt, GcrOptimizer) and isinstance(opt, torch.optim.Optimizer)
    body, head = opt.param_groups
    assert head["grassmann"] and head["weight_decay"] == 0.0 and head["lr"] == pytest.approx(0.02)
    assert body["weight_decay"] == 0.1 and not body.get("grassmann")
    assert [id(p) for p in head["params"]] == [id(model.head.bases)]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert head["lr"] == pytest.approx(0.01) and body["lr"] == pytest.approx(0.005)
    x, y = next(task.batches(task.splits("target", 0)["train"], 16, torch.Generator().manual_seed(0)))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()
    assert "exp_avg" in opt.state[model.body[0].weight]  # AdamW on the body
    assert "momentum_buffer" in opt.state[model.head.bases] and "exp_avg" not in opt.state[model.head.bases]


@pytest.mark.slow
def test_trained_bases_stay_orthonormal_and_the_head_learns(task):
    """The harness's own loop, the finetune recipe cut to 40 steps from a briefly source-trained
    base: every W_c orthonormal to 1e-5 at the end, and the target accuracy far above chance
    (0.84 on val when this was written; chance is 0.1)."""
    base = task.make_model(0)
    train(base, task, None, task.splits("source", 0)["train"], task.recipe("pretrain").replace(steps=60), 0,
          torch.device("cpu"))
    method = GcrMethod(qr_every=7)
    model = method.apply(base, 8, ctx())
    before = model.head.bases.detach().clone()
    splits = task.splits("target", 0)
    train(model, task, method, splits["train"], task.recipe("finetune").replace(steps=40), 0, torch.device("cpu"))
    assert orthonormality_error(model.head.bases) < 1e-5
    assert (model.head.bases.detach() - before).abs().max() > 1e-2  # it moved
    assert task.evaluate(model, splits["test"]) > 0.5


def test_qr_every_repairs_drift():
    p = nn.Parameter(orthonormalise(torch.randn(2, 6, 3, dtype=torch.float64)).float())
    opt = GcrOptimizer([{"params": [p], "grassmann": True}], lr=0.0, weight_decay=0.0, momentum=0.0, qr_every=1)
    with torch.no_grad():
        p.mul_(1.01)  # knocked off the manifold
    p.grad = torch.zeros_like(p)
    opt.step()
    assert orthonormality_error(p) < 1e-6


def test_softmax_head_k1_is_a_plain_linear_head(task):
    base = task.make_model(0)
    model = SoftmaxHeadMethod().apply(base, 1, ctx())
    head = model.head
    assert isinstance(head, PrototypeHead) and head.linear.weight.shape == (10, 32)
    x = torch.rand(3, 64)
    h = base.body(x)
    assert torch.allclose(model(x), h @ head.linear.weight.T + head.linear.bias, atol=1e-6)
    assert not torch.equal(head.linear.weight, base.head.weight)  # a fresh head, not the old one
    wide = SoftmaxHeadMethod().apply(base, 8, ctx())
    gcr = GcrMethod().apply(base, 8, ctx())
    extra = count_params(wide).total - count_params(gcr).total
    assert extra == 10 * 8  # equal parameters up to the biases: C k (d + 1) vs C k d
    assert wide(x).shape == (3, 10)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [GcrMethod, SoftmaxHeadMethod])
def test_conformance_kit_passes(cls, task):
    results = check_method(cls, task, kind="head")
    failures = [str(r) for r in results if r.failed]
    assert not failures, "\n".join(failures)
    assert {r.check for r in results if r.skipped} <= {"identity_at_init"}


def test_lr_factor_reaches_the_head_group(task):
    """The harness scales every group's rate by the schedule: the head's step follows warm-up."""
    model = GcrMethod().apply(task.make_model(0), 2, ctx())
    opt = make_optimizer(model, GcrMethod(), 0.01, 0.0)
    recipe = task.recipe("finetune")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, recipe))
    assert opt.param_groups[1]["lr"] == pytest.approx(0.01 * lr_factor(0, recipe))
    del sched


def test_thin_svd_matches_the_factorisation():
    from lowdim_bench_builtin.methods._grassmann import thin_svd

    h = torch.randn(3, 12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u, s, vh = thin_svd(h)
    assert torch.allclose(u @ torch.diag_embed(s) @ vh, h, atol=1e-12)
    assert torch.allclose(u.transpose(-1, -2) @ u, torch.eye(4, dtype=torch.float64).expand(3, 4, 4), atol=1e-12)
    assert torch.allclose(s, torch.linalg.svdvals(h), atol=1e-12)
