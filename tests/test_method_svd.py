"""SVD (LoRD): exact at full rank, optimal truncation, break-even rule, monotone counts, FLOPs."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.registry import Registry
from lowdim_bench_builtin.methods import svd as svd_module
from lowdim_bench_builtin.methods.svd import FactoredLinear, SvdMethod


def ctx() -> ApplyContext:
    return ApplyContext(seed=0, device=torch.device("cpu"), task=None)  # type: ignore[arg-type]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 40, bias=False), nn.ReLU(), nn.Linear(40, 7))


def test_registers_through_hook() -> None:
    reg = Registry.from_objects({"svd": svd_module})
    assert reg.method("svd").cls is SvdMethod
    assert SvdMethod.kind == "compress" and SvdMethod.defaults["recover"] is False


def test_full_rank_reproduces_dense_output() -> None:
    base = mlp()
    x = torch.randn(16, 20)
    new = SvdMethod(skip_above_break_even=False).apply(base, 40, ctx())
    assert all(isinstance(new[i], FactoredLinear) for i in (0, 2, 4))
    assert [new[i].rank for i in (0, 2, 4)] == [20, 30, 7]  # clamped to min(d_in, d_out)
    torch.testing.assert_close(new(x), base(x), rtol=0, atol=1e-5)


def test_truncation_error_is_the_eckart_young_bound() -> None:
    base = mlp()
    r = 5
    new = SvdMethod(skip_above_break_even=False).apply(base, r, ctx())
    w = base[2].weight.double()
    approx = (new[2].second.weight @ new[2].first.weight).double()
    tail = torch.linalg.svdvals(w)[r:]
    torch.testing.assert_close(torch.linalg.norm(w - approx), tail.pow(2).sum().sqrt(), rtol=1e-5, atol=1e-6)
    # the split is balanced: both factors carry S^1/2
    torch.testing.assert_close(new[2].first.weight.norm(dim=1), new[2].second.weight.norm(dim=0), rtol=1e-5, atol=1e-6)


def test_bias_is_kept_on_the_second_factor() -> None:
    base = mlp()
    new = SvdMethod().apply(base, 2, ctx())
    assert new[0].first.bias is None and torch.equal(new[0].second.bias, base[0].bias)
    assert new[2].second.bias is None


def test_param_count_matches_formula() -> None:
    r = 3
    new = SvdMethod().apply(mlp(), r, ctx())
    expected = r * (20 + 30) + 30 + r * (30 + 40) + r * (40 + 7) + 7
    assert n_params(new) == expected


def test_break_even_rule_keeps_layers_dense() -> None:
    # 20x30: r* = 600 / 50 = 12. Below it the layer is factored; at or above it stays dense.
    model = nn.Sequential(nn.Linear(20, 30))
    assert isinstance(SvdMethod().apply(model, 11, ctx())[0], FactoredLinear)
    assert isinstance(SvdMethod().apply(model, 12, ctx())[0], nn.Linear)
    assert isinstance(SvdMethod(skip_above_break_even=False).apply(model, 12, ctx())[0], FactoredLinear)


@pytest.mark.parametrize("skip", [True, False])
def test_counts_are_monotone_in_rank(skip: bool) -> None:
    base, method = mlp(), SvdMethod(skip_above_break_even=skip)
    low, high = method.knob_range(base)
    assert (low, high) == (1, 30)
    counts = [n_params(method.apply(base, r, ctx())) for r in range(int(low), int(high) + 1)]
    assert all(a <= b for a, b in zip(counts, counts[1:]))
    assert counts[0] < counts[-1]
    if skip:
        assert counts[-1] == n_params(base)  # every layer is back to dense at the top
        assert max(counts) <= n_params(base)


def test_forward_flops_match_formula() -> None:
    batch, r = 9, 4
    x = torch.randn(batch, 20)
    new = SvdMethod().apply(mlp(), r, ctx())
    with FlopCounterMode(display=False) as fc:
        new(x)
    assert fc.get_total_flops() == 2 * batch * r * ((20 + 30) + (30 + 40) + (40 + 7))


def test_apply_leaves_the_model_untouched() -> None:
    base = mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    SvdMethod().apply(base, 3, ctx())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert all(isinstance(base[i], nn.Linear) for i in (0, 2, 4))


def test_svd_cache_follows_in_place_changes() -> None:
    base = mlp()
    first = SvdMethod().apply(base, 3, ctx())
    again = SvdMethod().apply(base, 3, ctx())
    assert torch.equal(first[2].first.weight, again[2].first.weight)
    with torch.no_grad():
        base[2].weight.mul_(2.0)
    changed = SvdMethod().apply(base, 3, ctx())
    torch.testing.assert_close(changed[2].second.weight @ changed[2].first.weight,
                               2 * (first[2].second.weight @ first[2].first.weight), rtol=1e-5, atol=1e-5)


def test_tied_and_attention_linears_stay_dense() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.mlp = nn.Linear(16, 64)
            self.lm_head = nn.Linear(16, 50, bias=False)
            self.lm_head.weight = self.emb.weight

    new = SvdMethod().apply(Tiny(), 2, ctx())
    assert isinstance(new.mlp, FactoredLinear)
    assert isinstance(new.lm_head, nn.Linear) and new.lm_head.weight is new.emb.weight
    assert isinstance(new.attn.out_proj, nn.Linear)


def test_bad_hparams_and_sizes_are_errors() -> None:
    with pytest.raises(PluginError):
        SvdMethod(recover=1)
    with pytest.raises(PluginError):
        SvdMethod(target_modules=["missing"]).apply(mlp(), 2, ctx())
    with pytest.raises(PluginError):
        SvdMethod().apply(mlp(), 0, ctx())
    only = SvdMethod(target_modules=["2"]).apply(mlp(), 2, ctx())
    assert isinstance(only[2], FactoredLinear) and isinstance(only[0], nn.Linear)


def test_transformer_layer_fast_path_sees_the_factored_weight() -> None:
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).eval()
    new = SvdMethod().apply(model, 3, ctx())
    assert isinstance(new.linear1, FactoredLinear) and isinstance(new.linear2, FactoredLinear)
    x = torch.randn(2, 5, 16)
    slow = new(x)  # grad enabled: the plain path, through the factors
    with torch.no_grad():  # the fused path reads linear1.weight / linear1.bias
        torch.testing.assert_close(new(x), slow, rtol=1e-4, atol=1e-5)
