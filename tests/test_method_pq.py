"""Product quantisation and the shared k-means: counts, bytes, bits, FLOPs, error vs k, determinism."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowdim_bench.api import PluginError
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run import budget
from lowdim_bench_builtin.methods import pq as pq_module
from lowdim_bench_builtin.methods._quantise import VQLinear, code_bits, code_dtype, kmeans, to_subvectors
from lowdim_bench_builtin.methods.pq import PqMethod
from method_helpers import ctx

SIZES = [(16, 24, True), (24, 32, False), (32, 8, True)]  # (d_in, d_out, bias)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for d_in, d_out, bias in SIZES:
        layers += [nn.Linear(d_in, d_out, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@torch.no_grad()
def rel_error(new: nn.Module, base: nn.Module) -> float:
    num = sum((new[i].weight - base[i].weight).pow(2).sum() for i in (0, 2, 4))
    den = sum(base[i].weight.pow(2).sum() for i in (0, 2, 4))
    return float((num / den).sqrt())


def test_registers_through_hook() -> None:
    reg = Registry.from_objects({"pq": pq_module})
    assert reg.method("pq").cls is PqMethod
    assert PqMethod.kind == "compress" and PqMethod.defaults["recover"] is False


def test_kmeans_finds_separated_clusters_and_is_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(50)
    x = centres[labels] + 0.1 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    a = kmeans(x, 4, 20, torch.Generator().manual_seed(3))
    b = kmeans(x, 4, 20, torch.Generator().manual_seed(3))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.centroids, b.centroids)
    # each true cluster maps to one code, and the four codes differ
    per_cluster = [a.codes[labels == c].unique() for c in range(4)]
    assert all(len(u) == 1 for u in per_cluster) and len({int(u) for u in per_cluster}) == 4
    for c in range(4):  # Lloyd's fixed point: every centre is the mean of its points
        torch.testing.assert_close(a.centroids[per_cluster[c]][0], x[labels == c].mean(0))
    exact = kmeans(x, 500, 20, torch.Generator().manual_seed(0))
    assert torch.equal(exact.centroids[exact.codes], x)


def test_code_dtype_and_bits() -> None:
    assert code_dtype(2) == torch.uint8 and code_dtype(256) == torch.uint8
    assert code_dtype(257) == torch.int16 and code_dtype(1 << 15) == torch.int16 and code_dtype((1 << 15) + 1) == torch.int32
    assert [code_bits(k) for k in (1, 2, 3, 256, 257)] == [0, 1, 2, 8, 9]


def test_counts_bytes_and_bits_match_the_formula() -> None:
    m, k = 4, 8
    new = PqMethod(m=m, skip_above_break_even=False).apply(mlp(), k, ctx())
    assert all(isinstance(new[i], VQLinear) for i in (0, 2, 4))
    n = [d_in * d_out // m for d_in, d_out, _ in SIZES]
    floats = sum(k * m + (d_out if bias else 0) for _, d_out, bias in SIZES)
    c = count_params(new)
    assert c.total == c.stored == floats and c.trainable == floats
    assert c.index_bytes == sum(n)  # uint8 codes, one byte each
    assert c.stored_bytes == 4 * floats + sum(n)
    bits = sum(new[i].ideal_bits() for i in (0, 2, 4))
    assert bits == sum(n) * math.ceil(math.log2(k)) + 32 * floats
    assert new[0].codes.shape == (24, 16 // m) and new[0].codes.dtype == torch.uint8


def test_more_than_256_centres_store_int16_codes() -> None:
    torch.manual_seed(0)
    new = PqMethod(m=4, skip_above_break_even=False).apply(nn.Sequential(nn.Linear(64, 64)), 300, ctx())
    c = count_params(new)
    assert new[0].codes.dtype == torch.int16 and c.index_bytes == 2 * 1024
    assert c.stored == 300 * 4 + 64


def test_error_decreases_with_k_and_vanishes_at_one_centre_per_subvector() -> None:
    base = mlp()
    errs = [rel_error(PqMethod(m=4, skip_above_break_even=False).apply(base, k, ctx()), base) for k in (2, 8, 32, 96)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    exact = PqMethod(m=4, skip_above_break_even=False).apply(base, 192, ctx())  # k >= n of every layer
    assert rel_error(exact, base) < 1e-6


def test_break_even_keeps_layers_dense_and_counts_monotone() -> None:
    base, method = mlp(), PqMethod(m=4)
    low, high = method.knob_range(base)
    assert (low, high) == (1, 192)
    # last layer: n = 64, dense 1024 bytes; PQ 16 k + 64 bytes reaches it at k = 60
    assert isinstance(method.apply(base, 59, ctx())[4], VQLinear)
    assert isinstance(method.apply(base, 60, ctx())[4], nn.Linear)
    ks = [1, 2, 5, 10, 30, 59, 60, 80, 100, 150, 191, 192]
    stored = [count_params(method.apply(base, k, ctx())).stored for k in ks]
    nbytes = [count_params(method.apply(base, k, ctx())).stored_bytes for k in ks]
    assert all(a <= b for a, b in zip(stored, stored[1:])) and stored[0] < stored[-1]
    assert all(a <= b for a, b in zip(nbytes, nbytes[1:]))
    assert stored[-1] == count_params(base).stored  # all dense again at the top


def test_forward_flops_are_the_dense_product() -> None:
    batch = 5
    new = PqMethod(m=4, skip_above_break_even=False).apply(mlp(), 8, ctx())
    with FlopCounterMode(display=False) as fc:
        new(torch.randn(batch, 16))
    assert fc.get_total_flops() == 2 * batch * sum(d_in * d_out for d_in, d_out, _ in SIZES)


def test_deterministic_per_seed() -> None:
    base = mlp()
    a, b = (PqMethod(m=4).apply(base, 8, ctx(0)) for _ in range(2))
    other = PqMethod(m=4).apply(base, 8, ctx(1))
    assert torch.equal(a[2].codes, b[2].codes) and torch.equal(a[2].codebook, b[2].codebook)
    assert not torch.equal(a[2].codebook, other[2].codebook)


def test_recovery_trains_the_codebook_with_codes_fixed() -> None:
    new = PqMethod(m=4).apply(mlp(), 8, ctx()).train()
    codes = new[2].codes.clone()
    opt = torch.optim.SGD([p for p in new.parameters() if p.requires_grad], lr=0.1)
    new(torch.randn(8, 16)).pow(2).sum().backward()
    assert new[2].codebook.grad is not None and new[2].codebook.grad.abs().sum() > 0
    before = new[2].weight.detach().clone()
    opt.step()
    assert torch.equal(new[2].codes, codes) and not torch.equal(new[2].weight, before)
    # the weight is still decoded from the (changed) codebook at the fixed codes
    torch.testing.assert_close(new[2].weight, new[2].codebook[codes.long()].reshape(32, 24))


def test_apply_leaves_the_model_untouched() -> None:
    base = mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    PqMethod(m=4).apply(base, 8, ctx())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert all(isinstance(base[i], nn.Linear) for i in (0, 2, 4))


def test_budget_search_lands_within_one_knob_step() -> None:
    base, method = mlp(), PqMethod(m=4)
    dense = count_params(base).stored
    for target in (0.1, 0.3, 0.6):
        sized = budget.search(method, base, "compress", target, dense, ctx())
        assert sized.fraction <= target
        above = count_params(method.apply(base, int(sized.knob) + 1, ctx())).stored / dense
        assert above > target


def test_transformer_layer_fast_path_sees_the_decoded_weight() -> None:
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).eval()
    new = PqMethod(m=4).apply(model, 8, ctx())
    assert isinstance(new.linear1, VQLinear) and isinstance(new.linear2, VQLinear)
    x = torch.randn(2, 5, 16)
    slow = new(x)
    with torch.no_grad():
        torch.testing.assert_close(new(x), slow, rtol=1e-4, atol=1e-5)


def test_bad_hparams_and_sizes_are_errors() -> None:
    with pytest.raises(PluginError, match=r"m = 0 is outside \[1, inf\]"):
        PqMethod(m=0)
    with pytest.raises(PluginError, match="recover"):
        PqMethod(recover=1)
    with pytest.raises(PluginError, match=r"m=5 does not divide.*d_in=16"):
        PqMethod(m=5).apply(mlp(), 4, ctx())
    with pytest.raises(PluginError, match="k"):
        PqMethod(m=4).apply(mlp(), 0, ctx())
    with pytest.raises(PluginError, match="missing"):
        PqMethod(target_modules=["missing"]).apply(mlp(), 2, ctx())
    with pytest.raises(PluginError, match="does not divide"):
        to_subvectors(torch.zeros(3, 10), 4)
