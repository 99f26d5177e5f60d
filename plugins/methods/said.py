"""SAID, structure-aware intrinsic dimension (Aghajanyan et al. 2020, "Intrinsic Dimensionality
Explains the Effectiveness of Language Model Fine-Tuning").

theta_i = theta0_i + lambda_i (P z)_i for each parameter tensor i, with one trainable scalar
lambda_i per tensor. The paper writes theta^D_i = theta^D_{0,i} + lambda_i P(theta^{d-m})_i and
learns the m lambdas jointly with theta^{d-m}: the m lambdas are counted in d, so z has d - m
coordinates and the trainable total is exactly d. Here m is the number of parameter tensors
(what the reference code does, one lambda per `named_parameters()` entry; the paper says
"layers"). The reference code initialises the lambdas to 1 and z to 0, as we do, so the model
equals the pretrained base at step 0; it also takes d - m - 1 coordinates for z, one fewer than
the paper's count: we follow the paper.

Everything else (projections, forward, FLOP and parameter accounting, budgets, merged
inference) is `intrinsic`'s; see plugins/methods/intrinsic.py. SAID is an adapt method; the
smallest d is m + 1 (one z coordinate).
"""
from __future__ import annotations

from torch import nn

from lowdim_bench.hookspecs import hookimpl
from lowdim_bench_builtin.methods.intrinsic import IntrinsicMethod, count_tensors


class SaidMethod(IntrinsicMethod):
    name = "said"
    kind = "adapt"
    kinds = ()
    description = ("SAID (Aghajanyan et al. 2020): theta_i = theta0_i + lambda_i (P z)_i, one lambda per "
                   "tensor (init 1) counted in d; z has d - m coordinates.")
    said = True

    def min_dim(self, model: nn.Module) -> int:
        return count_tensors(model) + 1

    def z_dim(self, model: nn.Module, dim: int) -> int:
        return dim - count_tensors(model)


@hookimpl
def register_methods(register) -> None:
    register(SaidMethod)
