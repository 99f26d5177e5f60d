"""SVFit: only the top-r singular values train; exact identity at init; counts, FLOPs, merge, budget."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import PluginError
from lowdim_bench.measure.flops import forward_flops
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run.budget import search
from lowdim_bench_builtin.methods import svfit as svfit_module
from lowdim_bench_builtin.methods.svfit import SvfitLayer, SvfitMethod, merge_svfit
from method_helpers import ctx, mlp


def convnet() -> nn.Module:
    """Stride 2 + padding + dilation 2, groups 2, depthwise, reflect padding, 'same' padding."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(8, 12, 3, padding=1, groups=2),
        nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False),
        nn.Conv2d(12, 4, (3, 2), padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding="same", dilation=2),
    )


CONV_X = (2, 6, 17, 15)


def layers(model: nn.Module) -> list[SvfitLayer]:
    return [m for m in model.modules() if isinstance(m, SvfitLayer)]


def perturb_sigma(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in layers(model):
            m.sigma.mul_(1 + 0.5 * torch.randn(m.sigma.shape, generator=g))


def test_registers_through_hook() -> None:
    reg = Registry.from_objects({"svfit": svfit_module})
    assert reg.method("svfit").cls is SvfitMethod
    assert SvfitMethod.kind == "adapt" and SvfitMethod.identity_at_init


def test_trainable_is_r_per_matrix_clamped_to_full_rank() -> None:
    new = SvfitMethod().apply(mlp(), 3, ctx())
    assert count_params(new).trainable == 3 + 3
    new = SvfitMethod().apply(mlp(), 25, ctx())  # clamps to min(20, 30) and min(30, 7)
    assert count_params(new).trainable == 20 + 7
    # conv kernels as one (C_out, C_in/g kh kw) matrix each: ranks 8, 12, 9 (depthwise 12 x 9), 4, 4
    new = SvfitMethod().apply(convnet(), 10, ctx())
    assert count_params(new).trainable == 8 + 10 + 9 + 4 + 4
    assert [m.sigma.numel() for m in layers(new)] == [8, 10, 9, 4, 4]


def test_stored_counts_frozen_vectors_and_pretrained_values() -> None:
    base, r = mlp(), 3
    c = count_params(SvfitMethod().apply(base, r, ctx()))
    dense = count_params(base).total
    assert c.total == dense + 2 * r  # W and biases kept, one sigma per layer
    # buffers U_r (d_out r), V_r (r d_in) and S_r (r) per layer
    assert c.stored == dense + 2 * r + r * (20 + 30) + r + r * (30 + 7) + r


def test_only_sigma_is_trainable_and_base_untouched() -> None:
    base = convnet()
    base[1].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    new = SvfitMethod().apply(base, 2, ctx())
    for name, p in new.named_parameters():
        assert p.requires_grad == name.endswith("sigma"), name
    perturb_sigma(new)
    new(torch.randn(*CONV_X)).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert flags == {n: p.requires_grad for n, p in base.named_parameters()}
    assert all(p.grad is None for p in base.parameters())
    assert all(type(m) is nn.Conv2d for m in base)
    assert all(m.sigma.grad is not None and m.sigma.grad.abs().sum() > 0 for m in layers(new))


@pytest.mark.parametrize("which", ["top", "bottom"])
def test_identity_at_init_is_exact(which: str) -> None:
    for make, shape in ((mlp, (9, 20)), (convnet, CONV_X)):
        base = make()
        x = torch.randn(*shape)
        new = SvfitMethod(which=which).apply(base, 3, ctx())
        assert torch.equal(new(x), base(x))
    conv = SvfitMethod().apply(convnet(), 2, ctx())
    assert conv[0].base.stride == (2, 2) and conv[0].base.dilation == (2, 2) and conv[1].base.groups == 2
    assert conv[3].base.padding_mode == "reflect"


@pytest.mark.parametrize("which", ["top", "bottom"])
def test_sigma_starts_at_the_chosen_singular_values_and_weight_is_the_split(which: str) -> None:
    base, r = convnet(), 3
    new = SvfitMethod(which=which).apply(base, r, ctx())
    perturb_sigma(new)
    for orig, layer in zip(base, layers(new)):
        w = orig.weight.detach().double().reshape(orig.out_channels, -1)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        k = s.numel()
        idx = slice(0, layer.rank) if which == "top" else slice(k - layer.rank, k)
        torch.testing.assert_close(layer.sigma0.double(), s[idx], rtol=1e-6, atol=1e-6)
        # W' = W_e + U_r diag(sigma) V_r^T with W_e = W - W_r (signs of U, V cancel in the product)
        w_r = u[:, idx] @ torch.diag(s[idx]) @ vh[idx]
        want = (w - w_r) + u[:, idx] @ torch.diag(layer.sigma.detach().double()) @ vh[idx]
        got = layer.weight.detach().double().reshape(w.shape)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if which == "top":
            assert torch.all(layer.sigma0[:-1] >= layer.sigma0[1:])


def test_top_and_bottom_differ_and_forward_uses_the_adapted_weight() -> None:
    base = convnet()
    x = torch.randn(*CONV_X)
    top = SvfitMethod().apply(base, 2, ctx())
    bottom = SvfitMethod(which="bottom").apply(base, 2, ctx())
    assert not torch.equal(top[1].sigma0, bottom[1].sigma0)
    perturb_sigma(top)
    assert not torch.allclose(top(x), base(x), atol=1e-3)
    h = x
    for layer in top:  # the reference: the plain conv with the adapted weight
        b = layer.base
        h_ref = F.conv2d(F.pad(h, b._reversed_padding_repeated_twice, mode="reflect") if b.padding_mode != "zeros" else h,
                         layer.weight, b.bias, b.stride, 0 if b.padding_mode != "zeros" else b.padding, b.dilation, b.groups)
        torch.testing.assert_close(layer(h), h_ref, rtol=1e-5, atol=1e-5)
        h = layer(h)


def test_merge_equals_unmerged_and_unmerge_restores() -> None:
    new = SvfitMethod().apply(convnet(), 3, ctx())
    perturb_sigma(new)
    x = torch.randn(*CONV_X)
    weights = {k: v.clone() for k, v in new.state_dict().items()}
    y = new(x)
    assert merge_svfit(new) == 5
    scale = y.abs().max().item()
    torch.testing.assert_close(new(x), y, rtol=1e-5, atol=1e-6 * scale)
    for m in layers(new):
        m.unmerge()
    for k, v in new.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=1e-6)


def dense_conv_flops(model: nn.Module, x: torch.Tensor) -> list[int]:
    out, h = [], x
    for conv in model:
        h = conv(h)
        kh, kw = conv.kernel_size
        out.append(2 * h.shape[0] * h.shape[2] * h.shape[3] * conv.out_channels * conv.in_channels // conv.groups * kh * kw)
    return out


def test_forward_flops_conv_rebuild_ideal_and_merged() -> None:
    base, r = convnet(), 2
    x = torch.randn(*CONV_X)
    per_layer = dense_conv_flops(base, x)
    dense = sum(per_layer)
    assert forward_flops(base, x).executed == dense
    new = SvfitMethod().apply(base, r, ctx())
    rebuild = [2 * c.out_channels * min(r, layer.rank) * c.weight[0].numel() for c, layer in zip(base, layers(new))]
    count = forward_flops(new, x)
    assert count.executed == dense + sum(rebuild)
    # factored order: 2 P r (C_in kh kw + C_out) per layer, P = output positions
    factored = [f // (c.out_channels * c.weight[0].numel()) * r * (c.in_channels * c.kernel_size[0] * c.kernel_size[1]
                                                               + c.out_channels) for f, c in zip(per_layer, base)]
    assert count.ideal == dense + sum(min(a, b) for a, b in zip(rebuild, factored))
    merge_svfit(new)
    assert forward_flops(new, x).executed == forward_flops(new, x).ideal == dense


@pytest.mark.parametrize("batch", [1, 64])
def test_forward_flops_linear_and_the_cheaper_order_in_ideal(batch: int) -> None:
    base, r = mlp(), 3
    x = torch.randn(batch, 20)
    dense = 2 * batch * (20 * 30 + 30 * 7)
    new = SvfitMethod().apply(base, r, ctx())
    rebuild = 2 * r * (30 * 20 + 7 * 30)
    factored = 2 * batch * r * ((20 + 30) + (30 + 7))
    count = forward_flops(new, x)
    assert count.executed == dense + rebuild
    assert count.ideal == dense + min(2 * r * 30 * 20, 2 * batch * r * 50) + min(2 * r * 7 * 30, 2 * batch * r * 37)
    assert (count.ideal < count.executed) == (batch == 1) and factored > 0


def test_for_inference_merges_only_when_asked() -> None:
    x = torch.randn(4, 20)
    for merged in (False, True):
        method = SvfitMethod(merged_inference=merged)
        new = method.apply(mlp(), 2, ctx())
        perturb_sigma(new)
        y = new(x)
        deployed = method.for_inference(new)
        assert all(m.merged == merged for m in layers(deployed))
        torch.testing.assert_close(deployed(x), y, rtol=1e-5, atol=1e-5)
        assert forward_flops(deployed, x).executed == 2 * 4 * (20 * 30 + 30 * 7) + (0 if merged else 2 * 2 * (600 + 210))


@pytest.mark.parametrize("budget", [1e-4, 3e-4, 1e-3, 2e-3, 0.5])
def test_budget_search_reaches_the_fraction_within_one_knob_step(budget: float) -> None:
    base, method = convnet(), SvfitMethod()
    dense = count_params(base).total
    sized = search(method, base, "adapt", budget, dense, ctx())
    lo, hi = method.knob_range(base)
    assert (lo, hi) == (1, 12)
    trainable = count_params(sized.model).trainable
    assert sized.fraction == trainable / dense
    if sized.over_budget:
        assert sized.knob == lo and budget < sized.fraction
        return
    assert sized.fraction <= budget
    if sized.knob < hi:
        above = count_params(method.apply(base, sized.knob + 1, ctx())).trainable / dense
        assert above > budget


def test_bad_input_names_the_value() -> None:
    with pytest.raises(PluginError, match="middle"):
        SvfitMethod(which="middle")
    with pytest.raises(PluginError, match="nope"):
        SvfitMethod(target_modules=["nope"]).apply(mlp(), 2, ctx())
    with pytest.raises(PluginError, match="merged_inference"):
        SvfitMethod(merged_inference="yes")
    for bad in (0, 2.5, None):
        with pytest.raises(PluginError, match="rank"):
            SvfitMethod().apply(mlp(), bad, ctx())
    with pytest.raises(PluginError, match="no Linear or Conv2d"):
        SvfitMethod().apply(nn.Sequential(nn.ReLU()), 1, ctx())


def test_multihead_attention_linears_are_skipped_and_fast_path_sees_the_weight() -> None:
    model = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).eval()
    new = SvfitMethod().apply(model, 2, ctx()).eval()
    assert isinstance(new.self_attn.out_proj, nn.Linear) and isinstance(new.linear1, SvfitLayer)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(new(x), model(x))
    perturb_sigma(new)
    slow = new(x)
    with torch.no_grad():
        torch.testing.assert_close(new(x), slow, rtol=1e-4, atol=1e-5)
