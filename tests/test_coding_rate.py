"""Coding rate (MCR^2): known Gaussian mixtures against the closed form."""
import math

import pytest
import torch

from lowdim_bench_builtin.analyses._coding_rate import class_coding_rate, coding_rate, rate_reduction

EPS = 0.5
D = 12
# class j: m_j samples spanning k_j coordinates of its own block, second moment s_j on that block
CLASSES = [(5, 2, 4.0), (50, 3, 1.0), (200, 4, 0.25)]


def exact_moment_mixture(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian draws per class, whitened so that Z_j^T Z_j = m_j s_j P_j holds exactly
    (P_j the projection onto the class's coordinate block): the closed form is then exact."""
    gen = torch.Generator().manual_seed(seed)
    rows, labels, start = [], [], 0
    for j, (m, k, s) in enumerate(CLASSES):
        g = torch.randn(m, k, generator=gen, dtype=torch.float64)
        evals, evecs = torch.linalg.eigh(g.T @ g / m)
        g = g @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T * math.sqrt(s)  # now g^T g = m s I_k
        z = torch.zeros(m, D, dtype=torch.float64)
        z[:, start:start + k] = g
        rows.append(z)
        labels.append(torch.full((m,), j))
        start += k
    return torch.cat(rows), torch.cat(labels)


def closed_form(eps: float) -> tuple[float, float]:
    m = sum(c[0] for c in CLASSES)
    r = 0.5 * sum(k * math.log(1 + D * mj * s / (m * eps ** 2)) for mj, k, s in CLASSES)
    r_c = sum(mj / (2 * m) * k * math.log(1 + D * s / eps ** 2) for mj, k, s in CLASSES)
    return r, r_c


def test_coding_rate_of_a_known_mixture_equals_the_closed_form():
    z, y = exact_moment_mixture()
    r, r_c = closed_form(EPS)
    assert coding_rate(z, EPS, normalize=False) == pytest.approx(r, rel=1e-10)
    assert class_coding_rate(z, y, EPS, normalize=False) == pytest.approx(r_c, rel=1e-10)  # class 0 has m < d
    cr = rate_reduction(z, y, EPS, normalize=False)
    assert cr.delta_r == pytest.approx(r - r_c, rel=1e-9)
    assert (cr.eps, cr.d, cr.m, cr.classes) == (EPS, D, 255, 3)


def test_sampled_gaussian_mixture_approaches_the_closed_form():
    """Plain i.i.d. draws (no whitening): Z Z^T / m -> the mixture's second moment, so R and R_c
    converge to the same closed form as m grows."""
    gen = torch.Generator().manual_seed(1)
    n = 1000
    rows, labels, start = [], [], 0
    for j, (m, k, s) in enumerate(CLASSES):
        z = torch.zeros(n * m // 5, D, dtype=torch.float64)
        z[:, start:start + k] = torch.randn(len(z), k, generator=gen, dtype=torch.float64) * math.sqrt(s)
        rows.append(z)
        labels.append(torch.full((len(z),), j))
        start += k
    z, y = torch.cat(rows), torch.cat(labels)
    r, r_c = closed_form(EPS)
    assert coding_rate(z, EPS, normalize=False) == pytest.approx(r, rel=1e-2)
    assert class_coding_rate(z, y, EPS, normalize=False) == pytest.approx(r_c, rel=1e-2)


def test_normalised_rate_of_signed_basis_vectors():
    """Class j = points +-c e_j (any c > 0): on the unit sphere Z_j^T Z_j = m_j e_j e_j^T, so
    R = 1/2 sum log(1 + d m_j / (m eps^2)) and R_c = sum m_j/(2m) log(1 + d / eps^2)."""
    d, sizes = 6, [4, 10, 30]
    rows, labels = [], []
    for j, mj in enumerate(sizes):
        e = torch.zeros(mj, d, dtype=torch.float64)
        e[:, j] = torch.tensor([3.0, -3.0]).repeat(mj // 2)
        rows.append(e)
        labels.append(torch.full((mj,), j))
    z, y = torch.cat(rows), torch.cat(labels)
    m = sum(sizes)
    want_r = 0.5 * sum(math.log(1 + d * mj / (m * EPS ** 2)) for mj in sizes)
    want_rc = sum(mj / (2 * m) * math.log(1 + d / EPS ** 2) for mj in sizes)
    assert coding_rate(z, EPS) == pytest.approx(want_r, rel=1e-12)
    assert class_coding_rate(z, y, EPS) == pytest.approx(want_rc, rel=1e-12)


def test_rate_falls_with_eps_and_labels_must_match():
    z, y = exact_moment_mixture()
    assert coding_rate(z, 0.1) > coding_rate(z, 1.0)
    with pytest.raises(ValueError, match="labels"):
        class_coding_rate(z, y[:-1])
