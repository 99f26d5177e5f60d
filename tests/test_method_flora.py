"""FLoRA: Tucker update over the stored kernel's modes; identity at init, merge, counts, FLOPs, budget."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import PluginError
from lowdim_bench.measure.flops import forward_flops
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run.budget import search
from lowdim_bench_builtin.methods import flora as flora_module
from lowdim_bench_builtin.methods.flora import (
    FloraLayer, FloraMethod, contraction_flops, merge_flora, tucker_to_tensor, unmerge_flora)
from method_helpers import ctx, mlp


def convnet() -> nn.Module:
    """Stride 2 + padding + dilation 2, groups 2, depthwise, reflect padding, one input channel."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(8, 12, 3, padding=1, groups=2),
        nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False),
        nn.Conv2d(12, 4, (3, 2), padding=1, padding_mode="reflect"),
    )


CONV_X = (2, 1, 17, 15)


def layers(model: nn.Module) -> list[FloraLayer]:
    return [m for m in model.modules() if isinstance(m, FloraLayer)]


def perturb_core(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in layers(model):
            m.core.copy_(0.3 * torch.randn(m.core.shape, generator=g))


def test_registers_through_hook() -> None:
    reg = Registry.from_objects({"flora": flora_module})
    assert reg.method("flora").cls is FloraMethod
    assert FloraMethod.kind == "adapt" and FloraMethod.identity_at_init


def test_modes_are_the_stored_kernel_shape_and_ranks_are_clamped() -> None:
    new = FloraMethod().apply(convnet(), 4, ctx())
    assert [m.dims for m in layers(new)] == [(8, 1, 3, 3), (12, 4, 3, 3), (12, 1, 3, 3), (4, 12, 3, 2)]
    assert [m.ranks for m in layers(new)] == [(4, 1, 2, 2), (4, 4, 2, 2), (4, 1, 2, 2), (4, 4, 2, 2)]
    assert FloraMethod(kernel_rank=3).apply(convnet(), 4, ctx())[3].ranks == (4, 4, 3, 2)
    assert [m.ranks for m in layers(FloraMethod().apply(mlp(), 10, ctx()))] == [(10, 10), (7, 10)]


def test_trainable_count_matches_the_formula() -> None:
    # prod(r_n) + sum(I_n r_n) per layer
    new = FloraMethod().apply(mlp(), 3, ctx())
    assert count_params(new).trainable == (9 + 30 * 3 + 20 * 3) + (9 + 7 * 3 + 30 * 3)
    new = FloraMethod().apply(convnet(), 4, ctx())
    expected = ((4 * 1 * 2 * 2 + 8 * 4 + 1 * 1 + 3 * 2 + 3 * 2)
                + (4 * 4 * 2 * 2 + 12 * 4 + 4 * 4 + 3 * 2 + 3 * 2)
                + (4 * 1 * 2 * 2 + 12 * 4 + 1 * 1 + 3 * 2 + 3 * 2)
                + (4 * 4 * 2 * 2 + 4 * 4 + 12 * 4 + 3 * 2 + 2 * 2))
    assert count_params(new).trainable == expected
    assert count_params(new).total == count_params(convnet()).total + expected


def test_only_core_and_factors_train_and_base_untouched() -> None:
    base = convnet()
    base[1].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    new = FloraMethod().apply(base, 3, ctx())
    for name, p in new.named_parameters():
        assert p.requires_grad == (name.endswith("core") or ".factors." in name), name
    new(torch.randn(*CONV_X)).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert flags == {n: p.requires_grad for n, p in base.named_parameters()}
    assert all(p.grad is None for p in base.parameters())
    assert all(type(m) is nn.Conv2d for m in base)
    # at init only the core gets a gradient (dW is linear in G and G = 0)
    for m in layers(new):
        assert m.core.grad.abs().sum() > 0
        assert all(u.grad is None or u.grad.abs().sum() == 0 for u in m.factors)


@pytest.mark.parametrize("make,shape", [(mlp, (9, 20)), (convnet, CONV_X)])
def test_identity_at_init_is_exact(make, shape) -> None:
    base = make()
    x = torch.randn(*shape)
    new = FloraMethod().apply(base, 3, ctx())
    assert all(torch.count_nonzero(m.core) == 0 for m in layers(new))
    assert torch.equal(new(x), base(x))


def test_factor_init_is_kaiming_normal_and_seeded() -> None:
    big = nn.Linear(400, 300)
    a = FloraMethod().apply(big, 8, ctx(7))
    b = FloraMethod().apply(big, 8, ctx(7))
    c = FloraMethod().apply(big, 8, ctx(8))
    assert all(torch.equal(u, v) for u, v in zip(a.factors, b.factors))
    assert not torch.equal(a.factors[0], c.factors[0])
    for u in a.factors:  # kaiming_normal(a=sqrt 3) on fan_in r: std 1/sqrt(2 r)
        assert u.std().item() == pytest.approx(1 / math.sqrt(2 * 8), rel=0.05)
        assert abs(u.mean().item()) < 0.02


def test_delta_is_the_tucker_product_in_the_base_shape() -> None:
    new = FloraMethod(scale=2.5).apply(convnet(), 3, ctx())
    perturb_core(new)
    for m in layers(new):
        g = m.core.detach().double()
        u = [f.detach().double() for f in m.factors]
        want = 2.5 * torch.einsum("abcd,ia,jb,kc,ld->ijkl", g, *u)
        torch.testing.assert_close(m.delta_weight().double(), want, rtol=1e-5, atol=1e-6)
        assert m.delta_weight().shape == m.base.weight.shape


def test_grouped_and_depthwise_convs_apply_the_update_with_the_base_settings() -> None:
    base = convnet()
    new = FloraMethod().apply(base, 3, ctx())
    perturb_core(new)
    h = torch.randn(*CONV_X)
    for layer in new:
        b = layer.base
        w = b.weight + layer.delta_weight()
        if b.padding_mode == "zeros":
            ref = F.conv2d(h, w, b.bias, b.stride, b.padding, b.dilation, b.groups)
        else:
            ref = F.conv2d(F.pad(h, b._reversed_padding_repeated_twice, mode=b.padding_mode), w, b.bias,
                           b.stride, 0, b.dilation, b.groups)
        out = layer(h)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, b(h), atol=1e-4)  # the update is really there
        h = out


@pytest.mark.parametrize("make,shape", [(mlp, (6, 20)), (convnet, CONV_X)])
def test_merge_equals_unmerged_and_unmerge_restores(make, shape) -> None:
    new = FloraMethod().apply(make(), 3, ctx())
    perturb_core(new)
    x = torch.randn(*shape)
    weights = {k: v.clone() for k, v in new.state_dict().items()}
    y = new(x)
    assert merge_flora(new) == len(layers(new))
    scale = y.abs().max().item()
    torch.testing.assert_close(new(x), y, rtol=1e-5, atol=1e-6 * scale)
    unmerge_flora(new)
    for k, v in new.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=1e-6)


def test_contraction_flops_formula_by_hand() -> None:
    # Linear (20, 30), ranks (3, 3): 2*20*3*3 + 2*20*30*3
    assert contraction_flops((20, 30), (3, 3)) == 360 + 3600
    # conv (8, 4, 3, 3), ranks (3, 3, 2, 2), step k: 2 prod(I_<=k) prod(r_>=k) = 576 + 768 + 768 + 1152
    assert contraction_flops((8, 4, 3, 3), (3, 3, 2, 2)) == 2 * (8 * 36 + 32 * 12 + 96 * 4 + 288 * 2)
    core = torch.randn(3, 3, 2, 2)
    factors = [torch.randn(i, r) for i, r in zip((8, 4, 3, 3), (3, 3, 2, 2))]
    assert forward_flops(lambda_module(lambda: tucker_to_tensor(core, factors)), ()).executed == 3264


def lambda_module(fn) -> nn.Module:
    class Wrap(nn.Module):
        def forward(self) -> torch.Tensor:
            return fn()
    return Wrap()


def dense_flops(model: nn.Sequential, x: torch.Tensor) -> int:
    """2 x positions x C_out x (C_in/groups kh kw) per conv, 2 x rows x d_out x d_in per Linear."""
    total = 0
    for m in model:
        x = m(x)
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            positions = x.numel() // x.shape[1] if x.dim() == 4 else x.shape[0]
            total += 2 * positions * m.weight.shape[0] * m.weight[0].numel()
    return total


def test_forward_flops_unmerged_and_merged() -> None:
    for make, shape in ((mlp, (11, 20)), (convnet, CONV_X)):
        base = make()
        x = torch.randn(*shape)
        dense = dense_flops(base, x)
        assert forward_flops(base, x).executed == dense
        new = FloraMethod().apply(base, 3, ctx())
        tucker = sum(contraction_flops(m.dims, m.ranks) for m in layers(new))
        count = forward_flops(new, x)
        assert count.executed == count.ideal == 2 * dense + tucker  # base + update conv + contraction
        merge_flora(new)
        assert forward_flops(new, x).executed == dense


def test_for_inference_merges_only_when_asked() -> None:
    x = torch.randn(4, 20)
    for merged in (False, True):
        method = FloraMethod(merged_inference=merged)
        new = method.apply(mlp(), 2, ctx())
        perturb_core(new)
        y = new(x)
        deployed = method.for_inference(new)
        assert all(m.merged == merged for m in layers(deployed))
        torch.testing.assert_close(deployed(x), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [0.01, 0.05, 0.2, 0.5, 2.0])
def test_budget_search_reaches_the_fraction_within_one_knob_step(budget: float) -> None:
    base, method = convnet(), FloraMethod()
    dense = count_params(base).total
    sized = search(method, base, "adapt", budget, dense, ctx())
    lo, hi = method.knob_range(base)
    assert (lo, hi) == (1, 12)
    assert sized.fraction == count_params(sized.model).trainable / dense
    if sized.over_budget:
        assert sized.knob == lo and budget < sized.fraction
        return
    assert sized.fraction <= budget
    if sized.knob < hi:
        assert count_params(method.apply(base, sized.knob + 1, ctx())).trainable / dense > budget


def test_bad_input_names_the_value() -> None:
    for key, bad in (("kernel_rank", 0), ("kernel_rank", 1.5), ("scale", -1.0), ("dropout", 1.0),
                     ("merged_inference", "no")):
        with pytest.raises(PluginError, match=key):
            FloraMethod(**{key: bad})
    with pytest.raises(PluginError, match="nope"):
        FloraMethod(target_modules=["nope"]).apply(mlp(), 2, ctx())
    for bad in (0, 2.5, None):
        with pytest.raises(PluginError, match="rank"):
            FloraMethod().apply(mlp(), bad, ctx())
    with pytest.raises(PluginError, match=r"\[2, 2, 2\]"):
        FloraLayer(nn.Linear(3, 4), (2, 2, 2), 1.0, 0.0, torch.Generator())
