"""Singular-value spectra of weights and of weight updates, and where an update points.

Used by the `weight-spectra` metric to say how far, and in which directions, a method moved
each weight away from the model it started from:
- effective rank (Roy & Vetterli 2007): exp of the Shannon entropy of the singular values
  normalised to sum 1; between 1 (one direction) and min(d_out, d_in) (a flat spectrum). An
  update of rank r has effective rank at most r.
- top-r share: the fraction of the update's energy ||dW||_F^2 inside the base weight's top-r
  singular subspaces, ||U_r^T dW V_r||_F^2 / ||dW||_F^2 (both sides). A random update puts
  (r / d_out)(r / d_in) there on average, reported beside it (`random_share`), so a share far
  above that says the update amplifies directions the base already uses (LoRA paper, 7.3).
Conv kernels are taken as (C_out, C_in/groups x kh x kw) matrices. Everything in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["as_matrix", "singular_values", "effective_rank", "top_r_share", "random_share", "effective_weights",
           "UpdateStats", "update_stats"]


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """The weight as (d_out, everything else), float64, detached, on the CPU."""
    w = w.detach().to("cpu", torch.float64)
    return w.reshape(w.shape[0], -1) if w.dim() != 2 else w


def singular_values(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(as_matrix(w))


def effective_rank(w_or_s: torch.Tensor, *, is_spectrum: bool = False) -> float:
    """exp(H(p)), p = s / sum(s); 0 for a zero matrix."""
    s = w_or_s.detach().double() if is_spectrum else singular_values(w_or_s)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def top_r_share(delta: torch.Tensor, base: torch.Tensor, r: int) -> float:
    """Fraction of ||delta||_F^2 in span(U_r) x span(V_r) of `base`'s top-r singular vectors."""
    d, b = as_matrix(delta), as_matrix(base)
    if d.shape != b.shape:
        raise ValueError(f"update {tuple(d.shape)} and base {tuple(b.shape)} differ in shape")
    energy = float((d ** 2).sum())
    if energy == 0:
        return 0.0
    u, _, vh = torch.linalg.svd(b, full_matrices=False)
    r = max(1, min(int(r), u.shape[1]))
    inside = u[:, :r].T @ d @ vh[:r].T
    return float((inside ** 2).sum()) / energy


def random_share(shape: tuple[int, int], r: int) -> float:
    """Expected top-r share of an update with i.i.d. entries: (r / d_out)(r / d_in)."""
    d_out, d_in = shape
    r = max(1, min(int(r), d_out, d_in))
    return (r / d_out) * (r / d_in)


def effective_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The weight each named layer applies, read through the module at that name: the layer
    itself for a dense model, a method's wrapper (LoRA, SVFit, FLoRA, SLTrain, ...) whose
    `weight` property is its effective weight W0 + update. Names that the model lacks, or whose
    module has no weight tensor, are left out (a method that wraps the whole model, say)."""
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for name in names:
        m = modules.get(name)
        w = getattr(m, "weight", None) if m is not None else None
        if isinstance(w, torch.Tensor):
            with torch.no_grad():
                out[name] = w.detach()
    return out


@dataclass
class UpdateStats:
    """One layer: its weight after training and its update dW = W - W0."""

    layer: str
    shape: tuple[int, int]
    weight_erank: float
    weight_sv: list[float]
    update_erank: float
    update_sv: list[float]
    update_rel_norm: float  # ||dW||_F / ||W0||_F
    top_r: int
    top_r_share: float
    random_share: float


def update_stats(layer: str, w0: torch.Tensor, w: torch.Tensor, r: int, n_sv: int = 8) -> UpdateStats:
    b, a = as_matrix(w0), as_matrix(w)
    if a.shape != b.shape:
        raise ValueError(f"layer {layer!r}: trained weight {tuple(a.shape)} vs base {tuple(b.shape)}")
    delta = a - b
    s_w, s_d = torch.linalg.svdvals(a), torch.linalg.svdvals(delta)
    base_norm = float(b.norm())
    return UpdateStats(
        layer=layer, shape=(int(a.shape[0]), int(a.shape[1])),
        weight_erank=effective_rank(s_w, is_spectrum=True), weight_sv=[float(v) for v in s_w[:n_sv]],
        update_erank=effective_rank(s_d, is_spectrum=True), update_sv=[float(v) for v in s_d[:n_sv]],
        update_rel_norm=float(delta.norm()) / base_norm if base_norm > 0 else float("nan"),
        top_r=max(1, min(int(r), *a.shape)), top_r_share=top_r_share(delta, b, r),
        random_share=random_share(tuple(a.shape), r))
