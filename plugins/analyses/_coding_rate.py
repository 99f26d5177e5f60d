"""Coding rate of features (MCR^2, Yu et al. 2020; CRATE, Yu et al. 2023).

Features Z are d x m (one column per sample; the functions take the usual (m, d) rows and
transpose). The rate of coding them up to precision eps:
    R(Z, eps)        = 1/2 logdet(I_d + d / (m eps^2) Z Z^T)
    R_c(Z, eps | Pi) = sum_j  m_j / (2 m)  logdet(I_d + d / (m_j eps^2) Z_j Z_j^T)
    delta R          = R - R_c
in nats (natural log, as the reference code's torch.logdet). The numbers are comparable only at
the same eps, d and m (R grows with all three), so every result carries them. MCR^2 puts the
features on the unit sphere first (`normalize=True`, the default here); the closed-form tests
switch it off. eps^2 = 0.5 is MCR^2's training setting (its code's `eps` is eps^2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_EPS = math.sqrt(0.5)

__all__ = ["DEFAULT_EPS", "CodingRate", "coding_rate", "class_coding_rate", "rate_reduction"]


def _rows(z) -> torch.Tensor:
    t = torch.as_tensor(z).detach().to("cpu", torch.float64)
    if t.dim() != 2 or t.shape[0] < 1:
        raise ValueError(f"features must be (samples, features) with at least one sample, got {tuple(t.shape)}")
    return t


def _normalised(z: torch.Tensor) -> torch.Tensor:
    norms = z.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, z / norms.clamp_min(1e-300), z)


def _logdet_rate(z: torch.Tensor, eps: float, m: int) -> torch.Tensor:
    """1/2 logdet(I + d/(m eps^2) Z^T Z) of rows z (m', d): the d x d or, when fewer samples than
    features, the equal m' x m' determinant (Sylvester: det(I + A B) = det(I + B A))."""
    d = z.shape[1]
    scale = d / (m * eps ** 2)
    gram = z.T @ z if z.shape[0] >= d else z @ z.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    return 0.5 * torch.linalg.slogdet(eye + scale * gram)[1]


def coding_rate(z, eps: float = DEFAULT_EPS, normalize: bool = True) -> float:
    """R(Z, eps) of rows z (m, d)."""
    z = _rows(z)
    if normalize:
        z = _normalised(z)
    return float(_logdet_rate(z, eps, z.shape[0]))


def class_coding_rate(z, labels, eps: float = DEFAULT_EPS, normalize: bool = True) -> float:
    """R_c(Z, eps | Pi) for hard labels: each class coded on its own, weighted by its share."""
    z = _rows(z)
    y = torch.as_tensor(labels).reshape(-1)
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"{z.shape[0]} feature rows but {y.shape[0]} labels")
    if normalize:
        z = _normalised(z)
    m = z.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for c in torch.unique(y):
        zc = z[y == c]
        total += zc.shape[0] / m * _logdet_rate(zc, eps, zc.shape[0])
    return float(total)


@dataclass
class CodingRate:
    """R, R_c and delta R (nats) with the eps, d and m they were computed at."""

    r: float
    r_c: float
    delta_r: float
    eps: float
    d: int
    m: int
    classes: int
    normalize: bool


def rate_reduction(z, labels, eps: float = DEFAULT_EPS, normalize: bool = True) -> CodingRate:
    z = _rows(z)
    r = coding_rate(z, eps, normalize)
    r_c = class_coding_rate(z, labels, eps, normalize)
    return CodingRate(r=r, r_c=r_c, delta_r=r - r_c, eps=float(eps), d=int(z.shape[1]), m=int(z.shape[0]),
                      classes=int(torch.unique(torch.as_tensor(labels)).numel()), normalize=normalize)
