"""LoRA: identity at init, exact merge, frozen base, parameter and FLOP formulas."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowdim_bench.api import PluginError
from lowdim_bench.registry import Registry
from lowdim_bench_builtin.methods import lora as lora_module
from lowdim_bench_builtin.methods.lora import LoraLayer, LoraMethod, merge_lora, unmerge_lora
from method_helpers import ctx, mlp


def flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops()


def convnet() -> nn.Module:
    """Stride, padding, dilation, a grouped conv, a depthwise conv and reflect padding."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(8, 12, 3, padding=1, groups=4),
        nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False),
        nn.Conv2d(12, 4, (3, 2), padding=1, padding_mode="reflect"),
    )


def perturb_b(model: nn.Module, seed: int = 1) -> None:
    """Give every B non-zero values so the update is not trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer):
                m.lora_B.weight.copy_(0.1 * torch.randn(m.lora_B.weight.shape, generator=g))


def test_registers_through_hook() -> None:
    reg = Registry.from_objects({"lora": lora_module})
    assert reg.method("lora").cls is LoraMethod
    assert LoraMethod.kind == "adapt" and LoraMethod.identity_at_init


def test_trainable_count_linear_matches_formula() -> None:
    base = mlp()
    r = 3
    new = LoraMethod().apply(base, r, ctx())
    trainable = sum(p.numel() for p in new.parameters() if p.requires_grad)
    assert trainable == r * (20 + 30) + r * (30 + 7)
    dense = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in new.parameters()) == dense + trainable


def test_trainable_count_conv_matches_formula() -> None:
    r = 2
    new = LoraMethod().apply(convnet(), r, ctx())
    expected = r * (6 * 9 + 8) + r * (8 * 9 + 12) + r * (12 * 9 + 12) + r * (12 * 6 + 4)
    assert sum(p.numel() for p in new.parameters() if p.requires_grad) == expected


def test_only_a_and_b_are_trainable_and_base_frozen() -> None:
    new = LoraMethod().apply(mlp(), 2, ctx())
    for name, p in new.named_parameters():
        assert p.requires_grad == ("lora_A" in name or "lora_B" in name), name


def test_apply_leaves_the_base_untouched() -> None:
    base = mlp()
    base[2].bias.requires_grad_(False)  # a mixed pattern, to see it survives
    before = {k: v.clone() for k, v in base.state_dict().items()}
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    new = LoraMethod().apply(base, 4, ctx())
    perturb_b(new)
    new(torch.randn(5, 20)).sum().backward()
    after = base.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == {n: p.requires_grad for n, p in base.named_parameters()}
    assert all(p.grad is None for p in base.parameters())
    assert all(isinstance(m, nn.Linear) for m in (base[0], base[2]))


def test_identity_at_init_linear() -> None:
    base = mlp()
    x = torch.randn(9, 20)
    assert torch.equal(LoraMethod().apply(base, 5, ctx())(x), base(x))


def test_identity_at_init_conv_with_stride_dilation_groups() -> None:
    base = convnet()
    x = torch.randn(2, 6, 17, 15)
    new = LoraMethod().apply(base, 3, ctx())
    assert torch.equal(new(x), base(x))
    grouped = new[1]
    assert grouped.lora_A.groups == 4 and grouped.lora_B.groups == 4
    assert new[0].lora_A.stride == (2, 2) and new[0].lora_A.dilation == (2, 2)
    assert new[3].lora_A.padding_mode == "reflect"


def test_init_is_kaiming_a_and_zero_b_and_seeded() -> None:
    a1 = LoraMethod().apply(mlp(), 4, ctx(7))[0]
    a2 = LoraMethod().apply(mlp(), 4, ctx(7))[0]
    a3 = LoraMethod().apply(mlp(), 4, ctx(8))[0]
    assert torch.equal(a1.lora_A.weight, a2.lora_A.weight)
    assert not torch.equal(a1.lora_A.weight, a3.lora_A.weight)
    assert torch.count_nonzero(a1.lora_B.weight) == 0
    bound = 1 / 20 ** 0.5  # kaiming_uniform(a=sqrt 5) on fan_in 20
    assert a1.lora_A.weight.abs().max() <= bound and a1.lora_A.weight.abs().max() > 0.5 * bound


@pytest.mark.parametrize("make,shape", [(mlp, (6, 20)), (convnet, (2, 6, 17, 15))])
def test_merge_equals_unmerged_and_unmerge_restores(make, shape) -> None:
    new = LoraMethod(alpha=16.0).apply(make(), 3, ctx())
    perturb_b(new)
    x = torch.randn(*shape)
    weights = {k: v.clone() for k, v in new.state_dict().items()}
    y_unmerged = new(x)
    assert not torch.allclose(y_unmerged, make()(x), atol=1e-3)  # the update is really there
    assert merge_lora(new) == (4 if make is convnet else 2)
    scale = y_unmerged.abs().max().item()  # float32 rounding grows with the activations
    torch.testing.assert_close(new(x), y_unmerged, rtol=1e-5, atol=1e-6 * scale)
    unmerge_lora(new)
    for k, v in new.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=1e-6)


def test_eval_does_not_merge() -> None:
    new = LoraMethod().apply(mlp(), 2, ctx())
    perturb_b(new)
    w = new[0].base.weight.clone()
    new.eval()
    assert not new[0].merged and torch.equal(new[0].base.weight, w)
    x = torch.randn(3, 20)
    y = new(x)
    new.train()
    torch.testing.assert_close(new(x), y)


def test_forward_flops_linear_unmerged_and_merged() -> None:
    base, batch, r = mlp(), 11, 3
    x = torch.randn(batch, 20)
    dense = flops(base, x)
    assert dense == 2 * batch * (20 * 30 + 30 * 7)
    new = LoraMethod().apply(base, r, ctx())
    assert flops(new, x) == dense + 2 * batch * r * ((20 + 30) + (30 + 7))
    merge_lora(new)
    assert flops(new, x) == dense


def test_forward_flops_conv_unmerged_and_merged() -> None:
    base, r = convnet(), 2
    x = torch.randn(2, 6, 17, 15)
    dense = flops(base, x)
    new = LoraMethod().apply(base, r, ctx())
    extra = 0
    h = x
    for conv in base:
        h = conv(h)
        kh, kw = conv.kernel_size
        positions = h.shape[0] * h.shape[2] * h.shape[3]
        extra += 2 * positions * r * (conv.in_channels * kh * kw + conv.out_channels)
    assert flops(new, x) == dense + extra
    merge_lora(new)
    assert flops(new, x) == dense


def test_gradients_reach_only_the_adapter() -> None:
    new = LoraMethod().apply(mlp(), 2, ctx())
    new(torch.randn(4, 20)).pow(2).sum().backward()
    for name, p in new.named_parameters():
        if "lora_B" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif "lora_A" not in name:
            assert p.grad is None, name


def test_target_modules_selects_by_suffix_and_rejects_unknown() -> None:
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(8, 8)))
    model.add_module("head", nn.Linear(8, 3))
    new = LoraMethod(target_modules=["head"]).apply(model, 2, ctx())
    assert isinstance(new.head, LoraLayer) and isinstance(new.body[0], nn.Linear)
    with pytest.raises(PluginError, match="nope"):
        LoraMethod(target_modules=["nope"]).apply(model, 2, ctx())
    with pytest.raises(PluginError, match="unknown hyper-parameter"):
        LoraMethod(rank_pattern={})


def test_multihead_attention_linears_are_skipped() -> None:
    model = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    new = LoraMethod().apply(model, 2, ctx())
    assert isinstance(new.self_attn.out_proj, nn.Linear)
    assert isinstance(new.linear1, LoraLayer) and isinstance(new.linear2, LoraLayer)
    x = torch.randn(2, 5, 16)
    model.eval(), new.eval()
    torch.testing.assert_close(new(x), model(x))
    # Its no-grad fast path reads linear1.weight directly: that must be the adapted weight.
    perturb_b(new)
    slow = new(x)
    with torch.no_grad():
        torch.testing.assert_close(new(x), slow, rtol=1e-4, atol=1e-5)


def test_knob_range_and_rank_validation() -> None:
    assert LoraMethod().knob_range(mlp()) == (1, 20)
    assert LoraMethod().knob_range(convnet()) == (1, 8)  # per-group rank for grouped convs
    for bad in (0, 2.5, None):
        with pytest.raises(PluginError):
            LoraMethod().apply(mlp(), bad, ctx())
