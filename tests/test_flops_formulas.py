"""Closed-form FLOP counts for the methods' layers and the attention blocks, against the counter.

Linear, Conv2d (groups, dilation, stride), sparse products and CPU SDPA are pinned in
tests/test_measure_flops.py; here: LoRA merged and unmerged (Linear and grouped Conv2d, forward
and training step), truncated-SVD factors, a Tucker contraction written as explicit tensordots,
attention written out, and the fused attention fast paths torch's counter misses.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowdim_bench.api import ApplyContext
from lowdim_bench.measure.flops import forward_flops, train_step_flops
from lowdim_bench_builtin.methods.lora import LoraLayer, LoraMethod, merge_lora
from lowdim_bench_builtin.methods.svd import factor_linear


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def conv_out(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


# ---- LoRA ---------------------------------------------------------------------------------

def test_lora_linear_unmerged_and_merged() -> None:
    d_in, d_out, r, b = 48, 20, 4, 7
    layer = LoraLayer(nn.Linear(d_in, d_out), r, alpha=8.0, dropout=0.0, generator=gen())
    x = torch.randn(b, d_in)
    unmerged = 2 * b * (d_in * d_out + d_in * r + r * d_out)
    got = forward_flops(layer, (x,))
    assert got.executed == unmerged and got.ideal == unmerged
    layer.merge()
    assert forward_flops(layer, (x,)).executed == 2 * b * d_in * d_out  # the deployed form: dense cost


def test_lora_linear_training_step_with_frozen_base() -> None:
    d_in, d_out, r, b = 48, 20, 4, 7
    base = nn.Linear(d_in, d_out)
    base.requires_grad_(False)
    layer = LoraLayer(base, r, alpha=8.0, dropout=0.0, generator=gen())
    x = torch.randn(b, d_in)
    fwd = 2 * b * (d_in * d_out + d_in * r + r * d_out)
    # backward: dB (r x d_out), d(A x) (needs B), dA (input needs no grad); the frozen base none
    bwd = 2 * b * (r * d_out + r * d_out + d_in * r)
    assert train_step_flops(layer, lambda: layer(x).sum()).executed == fwd + bwd


@pytest.mark.parametrize("groups", [1, 2])
def test_lora_grouped_conv_unmerged_and_merged(groups: int) -> None:
    cin, cout, k, stride, pad, dil, r = 4, 6, 3, 2, 1, 2, 2
    base = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups)
    layer = LoraLayer(base, r, alpha=4.0, dropout=0.0, generator=gen())
    b, h, w = 2, 11, 9
    ho, wo = conv_out(h, k, stride, pad, dil), conv_out(w, k, stride, pad, dil)
    x = torch.randn(b, cin, h, w)
    dense = 2 * b * cout * ho * wo * (cin // groups) * k * k
    a = 2 * b * (r * groups) * ho * wo * (cin // groups) * k * k  # A: cin -> g r, the base kernel's shape
    bb = 2 * b * cout * ho * wo * r  # B: 1x1, g r -> cout in g groups: r inputs per output
    assert forward_flops(layer, (x,)).executed == dense + a + bb
    layer.merge()
    assert forward_flops(layer, (x,)).executed == dense


def test_lora_method_merged_inference_is_the_dense_count() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    x = torch.randn(3, 16)
    dense = forward_flops(model, (x,)).executed
    method = LoraMethod(merged_inference=True)
    adapted = method.apply(model, 2, ApplyContext(seed=0, device=torch.device("cpu"), task=None))
    assert forward_flops(adapted, (x,)).executed == dense + 2 * 3 * 2 * (16 + 32 + 32 + 5)
    assert merge_lora(adapted) == 2 and forward_flops(adapted, (x,)).executed == dense


# ---- truncated SVD ------------------------------------------------------------------------

@pytest.mark.parametrize("tokens_shape", [(9,), (2, 5)])
def test_svd_factors_cost_r_times_in_plus_out(tokens_shape: tuple) -> None:
    d_in, d_out, r = 40, 24, 6
    factored = factor_linear(nn.Linear(d_in, d_out), r)
    x = torch.randn(*tokens_shape, d_in)
    tokens = x.numel() // d_in
    got = forward_flops(factored, (x,))
    assert got.executed == 2 * tokens * r * (d_in + d_out) == got.ideal
    assert got.by_module == {"first": 2 * tokens * d_in * r, "second": 2 * tokens * r * d_out}
    # training all factors, input needs no gradient: dW of both, plus d(hidden) for the first
    step = train_step_flops(factored, lambda: factored(x).sum()).executed
    assert step == got.executed + 2 * tokens * (d_in * r + r * d_out) + 2 * tokens * r * d_out


# ---- Tucker -------------------------------------------------------------------------------

class TuckerLinear(nn.Module):
    """y[b, k] = sum_{i,j} x[b, i, j] W[i, j, k], W in Tucker form G x1 U1 x2 U2 x3 U3,
    contracted factor by factor with explicit tensordots (no einsum path to depend on)."""

    def __init__(self, i: int, j: int, k: int, r1: int, r2: int, r3: int) -> None:
        super().__init__()
        g = gen()
        self.u1 = nn.Parameter(torch.randn(i, r1, generator=g))
        self.u2 = nn.Parameter(torch.randn(j, r2, generator=g))
        self.core = nn.Parameter(torch.randn(r1, r2, r3, generator=g))
        self.u3 = nn.Parameter(torch.randn(r3, k, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tensordot(x, self.u1, dims=([1], [0]))  # (B, J, r1)
        t = torch.tensordot(t, self.u2, dims=([1], [0]))  # (B, r1, r2)
        t = torch.tensordot(t, self.core, dims=([1, 2], [0, 1]))  # (B, r3)
        return t @ self.u3  # (B, K)

    def dense(self) -> torch.Tensor:
        return torch.einsum("abc,ia,jb,ck->ijk", self.core, self.u1, self.u2, self.u3)


def test_tucker_contraction_by_explicit_tensordots() -> None:
    b, i, j, k, r1, r2, r3 = 5, 8, 6, 10, 3, 2, 4
    layer = TuckerLinear(i, j, k, r1, r2, r3)
    x = torch.randn(b, i, j)
    torch.testing.assert_close(layer(x), torch.tensordot(x, layer.dense(), dims=([1, 2], [0, 1])), rtol=1e-4, atol=1e-4)
    want = 2 * b * (j * i * r1 + r1 * j * r2 + r1 * r2 * r3 + r3 * k)
    assert forward_flops(layer, (x,)).executed == want
    with torch.backends.opt_einsum.flags(enabled=False):  # explicit contractions: no path choice
        assert forward_flops(layer, (x,)).executed == want


# ---- attention ----------------------------------------------------------------------------

class HandAttention(nn.Module):
    """Multi-head self-attention written out: projections, Q K^T, softmax, P V, output projection."""

    def __init__(self, e: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(e, 3 * e)
        self.out = nn.Linear(e, e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.h, e // self.h).permute(2, 0, 3, 1, 4)
        p = torch.softmax(q @ k.transpose(-2, -1) / (e // self.h) ** 0.5, dim=-1)
        return self.out((p @ v).transpose(1, 2).reshape(b, n, e))


def attention_block(b: int, lq: int, lk: int, e: int) -> int:
    """Q, K, V, output projections + Q K^T + P V, all heads: per head 2 Lq Lk D twice, H D = E."""
    return b * (2 * lq * e * e + 2 * 2 * lk * e * e + 2 * lq * e * e + 4 * lq * lk * e)


def test_attention_written_out_matches_the_closed_form() -> None:
    b, n, e, h = 2, 7, 16, 4
    assert forward_flops(HandAttention(e, h), (torch.randn(b, n, e),)).executed == attention_block(b, n, n, e)


class SelfMHA(nn.Module):
    def __init__(self, e: int, h: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(e, h, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


def test_torch_counts_zero_for_the_multihead_attention_fast_path() -> None:
    model = SelfMHA(16, 4).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model(torch.randn(2, 5, 16))
    assert c.get_total_flops() == 0  # aten._native_multi_head_attention: if this fails, revisit flops.py


@pytest.mark.parametrize("training", [False, True])
def test_multihead_attention_fast_and_slow_paths_count_the_same(training: bool) -> None:
    b, n, e, h = 2, 5, 16, 4
    model = SelfMHA(e, h).train(training)  # eval + no_grad takes the fused fast path
    assert forward_flops(model, (torch.randn(b, n, e),)).executed == attention_block(b, n, n, e)


@pytest.mark.parametrize("training", [False, True])
def test_transformer_encoder_layer_fast_and_slow_paths(training: bool) -> None:
    b, n, e, h, f = 2, 6, 16, 4, 40
    layer = nn.TransformerEncoderLayer(e, h, f, dropout=0.0, batch_first=True).train(training)
    want = attention_block(b, n, n, e) + 2 * b * n * (e * f + f * e)
    assert forward_flops(layer, (torch.randn(b, n, e),)).executed == want


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_fused_encoder_counts_ragged_sequences_by_their_lengths() -> None:
    from lowdim_bench.measure import flop_formulas as flops

    e, f = 8, 12
    src = torch.nested.nested_tensor([torch.randn(5, e), torch.randn(3, e)])
    w = nn.TransformerEncoderLayer(e, 2, f, dropout=0.0, batch_first=True)
    args = (src, e, 2, w.self_attn.in_proj_weight, None, None, None, False, False, 1e-5, None, None, None, None,
            w.linear1.weight)
    want = attention_block(1, 5, 5, e) + attention_block(1, 3, 3, e) + 4 * (5 + 3) * e * f
    assert flops._encoder_layer_fwd(*args) == want
