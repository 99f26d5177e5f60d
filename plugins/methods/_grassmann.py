"""Riemannian SGD on the Grassmannian for GCR's class subspaces, beside AdamW for the rest.

GCR (Wang et al. 2023; innerlee/GCR gcr/rsgd.py, per ../shared/METHODS.md) keeps each class
subspace as a d x k matrix W with orthonormal columns and moves it along geodesics:
    M <- mu M + G                         (momentum on the Euclidean gradient G = dL/dW)
    H <- M - W (W^T M)                    (projection onto the tangent space at W)
    H = U S V^T                           (thin SVD)
    W <- (W V cos(-eta S) + U sin(-eta S)) V^T
i.e. a step of length eta ||H|| along the geodesic in the direction -H; the momentum buffer keeps
H, and the next step's projection carries it to the new tangent space (projection as vector
transport). Every `qr_every` steps W is re-orthonormalised by QR (signs fixed so the basis does
not flip) to remove rounding drift. No weight decay: a decayed W leaves the manifold.

`GcrOptimizer` is one torch Optimizer (so the harness's schedule, gradient clipping and memory
figures see every group and all state): groups marked `grassmann=True` take the step above,
every other group is plain AdamW. The geodesic step runs in float64 and is batched over classes.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch


def project_tangent(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(I - W W^T) G for a batch of (d, k) bases W."""
    return g - w @ (w.transpose(-1, -2) @ g)


def thin_svd(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of a batch of tall (d, k) matrices as QR, then the SVD of the small k x k R factor:
    the same factors, and on CPU far cheaper than torch's batched SVD of the tall matrices (which,
    with two threads, was 80x slower in our measurement)."""
    if h.shape[-2] < h.shape[-1]:
        return torch.linalg.svd(h, full_matrices=False)
    q, r = torch.linalg.qr(h)
    u_r, s, vh = torch.linalg.svd(r)
    return q @ u_r, s, vh


def geodesic_step(w: torch.Tensor, h: torch.Tensor, eta: float) -> torch.Tensor:
    """W moved by eta along the geodesic in the direction -H (H tangent at W)."""
    u, s, vh = thin_svd(h)
    v = vh.transpose(-1, -2)
    cos = torch.cos(-eta * s).unsqueeze(-2)
    sin = torch.sin(-eta * s).unsqueeze(-2)
    return (w @ v * cos + u * sin) @ vh


def orthonormalise(w: torch.Tensor) -> torch.Tensor:
    """QR with the signs of R's diagonal made positive: the nearest-in-spirit orthonormal basis."""
    q, r = torch.linalg.qr(w)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs.unsqueeze(-2)


def orthonormality_error(w: torch.Tensor) -> float:
    """max |W^T W - I| over a batch of bases."""
    w = w.detach().double()
    gram = w.transpose(-1, -2) @ w
    return float((gram - torch.eye(w.shape[-1], dtype=torch.float64)).abs().max())


class GcrOptimizer(torch.optim.AdamW):
    """AdamW for ordinary groups; geodesic Riemannian SGD with momentum for `grassmann` groups.

    A grassmann group's parameters have shape (..., d, k) with orthonormal columns; its options
    are lr, momentum and qr_every."""

    def __init__(self, params: Iterable[dict[str, Any]], lr: float, weight_decay: float, momentum: float = 0.9,
                 qr_every: int = 10) -> None:
        self._grassmann_defaults = {"momentum": momentum, "qr_every": qr_every}
        super().__init__(params, lr=lr, weight_decay=weight_decay)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if param_group.get("grassmann"):
            for key, value in self._grassmann_defaults.items():
                param_group.setdefault(key, value)
            param_group["weight_decay"] = 0.0
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        plain = [g for g in groups if not g.get("grassmann")]
        try:  # AdamW's step walks self.param_groups: show it only its own groups
            self.param_groups = plain
            if plain:
                super().step()
        finally:
            self.param_groups = groups
        for group in groups:
            if group.get("grassmann"):
                self._riemannian_step(group)
        return loss

    def _riemannian_step(self, group: dict[str, Any]) -> None:
        eta, mu, every = float(group["lr"]), float(group["momentum"]), int(group["qr_every"])
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            w = p.detach().double()
            g = p.grad.detach().double()
            if mu > 0:
                buf = state.get("momentum_buffer")
                g = g if buf is None else mu * buf.double() + g
            h = project_tangent(w, g)
            if mu > 0:
                state["momentum_buffer"] = h.to(p.dtype)
            w = geodesic_step(w, h, eta)
            steps = int(state.get("grassmann_steps", 0)) + 1
            state["grassmann_steps"] = steps
            if every > 0 and steps % every == 0:
                w = orthonormalise(w)
            p.copy_(w.to(p.dtype))
