"""Weight and update spectra: effective rank, top-r share, effective weights through wrappers."""
import math

import pytest
import torch
from torch import nn

from lowdim_bench_builtin.metrics._spectra import (effective_rank, effective_weights, random_share, top_r_share,
                                                   update_stats)


def test_effective_rank_of_known_spectra():
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)  # flat spectrum: full
    u = torch.randn(8, 1, generator=torch.Generator().manual_seed(0))
    assert effective_rank(u @ u.T) == pytest.approx(1.0, abs=1e-6)  # rank one
    s = torch.tensor([3.0, 1.0], dtype=torch.float64)
    p = s / s.sum()
    assert effective_rank(s, is_spectrum=True) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert effective_rank(torch.zeros(3, 3)) == 0.0


def test_top_r_share_inside_and_outside_the_base_subspace():
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    s = torch.tensor([10.0, 8, 6, 4, 2, 1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05], dtype=torch.float64)
    base = u[:, :12] @ torch.diag(s) @ v.T
    inside = u[:, :2] @ torch.randn(2, 2, generator=gen, dtype=torch.float64) @ v[:, :2].T
    outside = u[:, 5:7] @ torch.randn(2, 2, generator=gen, dtype=torch.float64) @ v[:, 5:7].T
    assert top_r_share(inside, base, 2) == pytest.approx(1.0, abs=1e-10)
    assert top_r_share(outside, base, 2) == pytest.approx(0.0, abs=1e-10)
    assert top_r_share(inside + outside, base, 2) == pytest.approx(
        float((inside ** 2).sum() / ((inside + outside) ** 2).sum()), abs=1e-10)


def test_random_update_share_matches_its_expectation():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(64, 32, generator=gen)
    shares = [top_r_share(torch.randn(64, 32, generator=gen), base, 8) for _ in range(100)]
    assert sum(shares) / len(shares) == pytest.approx(random_share((64, 32), 8), rel=0.1)


def test_update_stats_of_a_rank_two_update():
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(30, 20, generator=gen)
    delta = torch.randn(30, 2, generator=gen) @ torch.randn(2, 20, generator=gen)
    st = update_stats("fc", w0, w0 + delta, r=4)
    assert st.update_erank <= 2.0 + 1e-6 and st.update_sv[2] < 1e-4
    assert st.update_rel_norm == pytest.approx(float(delta.norm() / w0.norm()), rel=1e-5)
    assert st.shape == (30, 20) and len(st.weight_sv) == 8


class Wrapped(nn.Module):
    """A method-style wrapper: the effective weight is a property (as LoRA's, SVFit's)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.delta = nn.Parameter(torch.ones_like(base.weight))

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight + self.delta


def test_effective_weights_read_through_wrappers():
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    wrapped = nn.Sequential(Wrapped(plain[0]), nn.ReLU(), nn.Identity())
    got = effective_weights(wrapped, ["0", "2", "missing"])
    assert list(got) == ["0"]  # no weight at "2", nothing at "missing"
    assert torch.equal(got["0"], plain[0].weight.detach() + 1)
