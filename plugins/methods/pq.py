"""Plain product quantisation of weights: the VQ baseline LR2VQ is compared with.

Each Linear's weight is cut into subvectors of size m along its rows (n = d_out d_in / m of them);
one k-means codebook per layer (k x m), shared by all its subvectors, as in the per-layer codebooks
of PQF (Martinez et al. 2021) and "And the bit goes down" (Stock et al. 2020), the VQ baselines of
the LR2VQ paper; codes are stored in the smallest integer dtype. This is lr2vq with d~ = m and no
projection: at the same (k, m, seed) both give the same codes and decoded weights (to float
rounding), and the same code bits; lr2vq stores m d~ more floats per layer (its P).

Counts per quantised layer: parameters k m (+ bias), code bytes n x itemsize(k) (uint8 up to 256
centres), ideal bits n ceil(log2 k) + 32 (k m + bias). Forward: W is gathered from the codebook
(no FLOPs), then x W^T: 2 B d_in d_out FLOPs, the dense count.

Choices (also in the report and docs):
- The size knob is k, centres per layer (clamped to the layer's n). The harness's budget counts
  stored elements, so a VQ layer counts its codebook (and bias), not its codes, which are index
  bytes; compare pq with lr2vq at equal (k, m) with fixed `knobs`, and read `stored_bytes` for
  the true size. Counts grow with k, so the budget search works.
- `skip_above_break_even` (default True): a layer whose VQ form (codebook + codes) would take at
  least the bytes of its dense weight stays dense; counts stay monotone in k.
- Every Linear is quantised by default, the head included (PQF quantises the classifier too);
  `target_modules` picks by name suffix. m must divide every chosen layer's d_in.
- `recover` (default False): with true, the harness fine-tunes the codebook and bias with codes
  fixed (the gradient of a centre is the sum over its subvectors, PQF's codebook fine-tuning).
"""
from __future__ import annotations

import torch

from lowdim_bench.hookspecs import hookimpl
from lowdim_bench_builtin.methods._quantise import VqMethod, kmeans


class PqMethod(VqMethod):
    name = "pq"
    description = "Product quantisation: per-layer k-means codebook over weight subvectors of size m; codes fixed, codebook trainable."

    def clustering_dim(self) -> int:
        return int(self.hparams["m"])

    def encode(self, sub: torch.Tensor, k: int, generator: torch.Generator):
        km = kmeans(sub, k, int(self.hparams["kmeans_iters"]), generator)
        return km.centroids, km.codes, None


@hookimpl
def register_methods(register) -> None:
    register(PqMethod)
