"""Random projections for intrinsic dimension: FWHT, unit columns, linearity, seeds, memory, FLOPs."""
from __future__ import annotations

import math

import pytest
import torch

from lowdim_bench.api import PluginError
from lowdim_bench.measure.flops import forward_flops, train_step_flops
from lowdim_bench.measure.memory import measure_inference
from lowdim_bench_builtin.methods._projections import (DenseProjection, FastfoodProjection, SparseProjection, fwht,
                                                        largest_dim, make_projection)

BIG = 2**30


def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def column(p, i: int) -> torch.Tensor:
    e = torch.zeros(p.d)
    e[i] = 1.0
    with torch.no_grad():
        return p(e)


def test_fwht_is_the_hadamard_matrix_and_its_own_inverse_up_to_n() -> None:
    x = torch.randn(3, 32, dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ hadamard(32).T, atol=1e-10)
    assert torch.allclose(fwht(fwht(x)) / 32, x, atol=1e-10)
    with pytest.raises(ValueError, match="power of two, got 12"):
        fwht(torch.zeros(12))


def test_fastfood_equals_h_g_pi_h_b_built_explicitly() -> None:
    """Every column of the transform is V = H G Pi H B (scaled, sliced to D), from its own buffers."""
    p = FastfoodProjection(13, 5, torch.Generator().manual_seed(3))
    L = p.L
    assert L == 16 and p.blocks == 1
    h = hadamard(L)
    b = torch.diag(p.signs[0].double())
    pi = torch.eye(L, dtype=torch.float64)[p.perm[0]]  # (Pi x)_i = x[perm_i]
    g = torch.diag(p.gauss[0].double())
    v = (h @ g @ pi @ h @ b)[:13, :5]
    got = torch.stack([column(p, i) for i in range(5)], 1).double()
    assert torch.allclose(got, v, atol=1e-5)


@pytest.mark.parametrize("kind", ["dense", "sparse", "fastfood"])
def test_projection_is_linear_and_differentiable(kind: str) -> None:
    p = make_projection(kind, 300, 20, seed=1, max_bytes=BIG)
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(20, generator=g), torch.randn(20, generator=g)
    assert torch.allclose(p(2 * z1 - 3 * z2), 2 * p(z1) - 3 * p(z2), atol=1e-5)
    z = z1.clone().requires_grad_(True)
    w = torch.randn(300, generator=g)
    (p(z) * w).sum().backward()
    pt = torch.stack([column(p, i) for i in range(20)], 1)  # P, column by column
    assert torch.allclose(z.grad, pt.T @ w, atol=1e-4)  # the gradient is P^T w


@pytest.mark.parametrize("kind", ["dense", "sparse", "fastfood"])
def test_same_seed_same_projection_other_seed_other(kind: str) -> None:
    z = torch.randn(10)
    a = make_projection(kind, 200, 10, seed=5, max_bytes=BIG)(z)
    b = make_projection(kind, 200, 10, seed=5, max_bytes=BIG)(z)
    c = make_projection(kind, 200, 10, seed=6, max_bytes=BIG)(z)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_dense_and_sparse_columns_have_unit_norm_exactly() -> None:
    for kind in ("dense", "sparse"):
        p = make_projection(kind, 5000, 40, seed=0, max_bytes=BIG)
        norms = torch.stack([column(p, i) for i in range(40)]).norm(dim=1)
        assert torch.allclose(norms, torch.ones(40), atol=1e-5), kind


def test_fastfood_columns_unit_norm_exact_at_a_power_of_two_and_within_1pct_below() -> None:
    p = make_projection("fastfood", 2**14, 300, seed=0, max_bytes=0)
    norms = torch.stack([column(p, i) for i in (0, 1, 77, 299)]).norm(dim=1)
    assert torch.allclose(norms, torch.ones(4), atol=1e-5)
    p = make_projection("fastfood", 100_000, 1000, seed=0, max_bytes=0)  # L = 131072, sliced to D
    norms = torch.stack([column(p, i) for i in (0, 1, 2, 500, 999)]).norm(dim=1)
    assert ((norms - 1).abs() < 0.01).all(), norms


def test_fastfood_stacks_independent_blocks_when_d_exceeds_l() -> None:
    p = make_projection("fastfood", 16, 40, seed=0, max_bytes=0)
    assert (p.L, p.blocks) == (16, 3)
    cols = torch.stack([column(p, i) for i in range(40)])
    assert torch.allclose(cols.norm(dim=1), torch.ones(40), atol=1e-5)
    assert not torch.allclose(cols[0], cols[16])  # block 2 is its own transform
    z = torch.randn(40)
    assert torch.allclose(p(z), cols.T @ z, atol=1e-4)


def test_fastfood_holds_o_of_d_bytes_whatever_d() -> None:
    """Memory does not grow with D x d: D = 1e6 holds the same bytes at d = 1e3 and d = 1e5."""
    small = make_projection("fastfood", 1_000_000, 1_000, seed=0, max_bytes=0)
    large = make_projection("fastfood", 1_000_000, 100_000, seed=0, max_bytes=0)
    L = 2**20
    assert small.held_bytes() == large.held_bytes() == L * (4 + 8 + 4)  # signs f32, perm i64, gauss f32
    assert large.held_bytes() < 1e-4 * 4 * 1_000_000 * 100_000  # vs a dense P


@pytest.mark.slow
def test_fastfood_forward_peak_memory_does_not_grow_with_d() -> None:
    peaks = {}
    for d in (1_000, 100_000):
        p = make_projection("fastfood", 2**18, d, seed=0, max_bytes=0)
        peaks[d] = measure_inference(p, (torch.randn(d),)).peak
    assert peaks[100_000] < 1.2 * peaks[1_000]
    assert peaks[100_000] < 64 * 2**18  # a few L-sized working vectors, not D x d


def test_sparse_density_is_one_over_sqrt_d_and_indices_are_counted() -> None:
    big, small = 10_000, 200
    p = make_projection("sparse", big, small, seed=0, max_bytes=BIG)
    expected = big * small / math.sqrt(big)
    assert abs(p.nnz - expected) < 5 * math.sqrt(expected)
    assert p.held_bytes() == p.nnz * (2 * 8 + 4)


def test_sparse_tiny_d_has_no_empty_column() -> None:
    p = make_projection("sparse", 4, 50, seed=0, max_bytes=BIG)
    norms = torch.stack([column(p, i) for i in range(50)]).norm(dim=1)
    assert torch.allclose(norms, torch.ones(50), atol=1e-6)


def test_dense_refuses_above_the_cap_with_the_sizes_named() -> None:
    with pytest.raises(PluginError, match=r"D=1000 x d=300 needs 1 MiB, over the cap max_projection_bytes=1000000"):
        make_projection("dense", 1000, 300, seed=0, max_bytes=1_000_000)
    assert largest_dim("dense", 1000, 1_000_000) == 250
    assert largest_dim("fastfood", 1000, 1) == 1000
    DenseProjection(1000, 250, torch.Generator(), 1_000_000)  # exactly at the cap is fine


def test_bad_sizes_and_kinds_are_refused() -> None:
    with pytest.raises(PluginError, match="d must be an integer >= 1, got 0"):
        make_projection("fastfood", 10, 0, seed=0, max_bytes=0)
    with pytest.raises(PluginError, match="unknown projection 'gauss'"):
        make_projection("gauss", 10, 2, seed=0, max_bytes=0)
    with pytest.raises(ValueError, match=r"expected z of shape \(3,\)"):
        make_projection("fastfood", 10, 3, seed=0, max_bytes=0)(torch.zeros(4))


def test_projection_flops_pinned_to_their_formulas() -> None:
    z = torch.randn(30)
    dense = make_projection("dense", 500, 30, seed=0, max_bytes=BIG)
    fd = forward_flops(dense, (z,))
    assert fd.executed == fd.ideal == 2 * 500 * 30
    sparse = make_projection("sparse", 500, 30, seed=0, max_bytes=BIG)
    assert isinstance(sparse, SparseProjection)
    fs = forward_flops(sparse, (z,))
    assert fs.executed == fs.ideal == 2 * sparse.nnz
    ff = make_projection("fastfood", 500, 30, seed=0, max_bytes=0)
    f = forward_flops(ff, (z,))
    L = 512
    assert f.executed == 0 and f.ideal == 2 * L * 9 + 2 * L
    zg = z.clone().requires_grad_(True)
    t = train_step_flops(ff, lambda: ff(zg).sum())
    assert t.executed == 0 and t.ideal == 2 * (2 * L * 9 + 2 * L)  # the transpose costs the same
