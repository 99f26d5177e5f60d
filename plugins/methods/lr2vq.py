"""LR2VQ (Zhu, Zhou and Zhong 2022, "Learning Low-Rank Representations for Model Compression").

What the paper says (abstract and section 3 as far as we could read it; the stored corpora give
the abstract and summaries, not the full section text, so the points marked (ours) are our
reading, not quotations): a weight is cut into subvectors of size m; each subvector is given a
low-rank representation z in R^d~ (d~ < m) with a learned projection, w = P z; the z, not the w,
are clustered into k centres, and the network is trained end to end on the task loss, after a
low-rank pre-training stage. Three hyper-parameters: k, m and d~. The compression ratio is set by
m (codes are log2 k bits per m weights); d~ trades low-rank approximation error (small d~) against
clustering error (large d~), so accuracy against d~ peaks in between. Plain PQ is the case d~ = m,
P = I (our `pq` method).

What we implement, mapped onto the harness (compress: trained model -> apply -> optional recovery
fine-tune):
- apply, low-rank representation: the layer's subvectors S (n x m, n = d_out d_in / m, cut along
  each row) get P = the top-d~ eigenvectors of S^T S (m x d~, orthonormal columns) and Z = S P,
  the least-squares best rank-d~ fit S ~ Z P^T. (ours) This closed form replaces the paper's
  low-rank pre-training on the task loss, which would need a training stage before the
  clustering; the harness has only the recovery fine-tune after apply. No mean is subtracted
  (the paper's w = P z has no offset).
- apply, clustering: k-means++ then Lloyd on Z (float64, seeded; _quantise.kmeans) gives the
  codebook C (k x d~) and the codes. The layer's weight is reshape((C P^T)[codes]).
- recovery (`recover = true`): end-to-end fine-tuning of C, P and the bias on the task loss with
  the codes frozen (hard assignments, gradients summed over each centre's subvectors). (ours) The
  paper trains the quantised model end to end; we do not re-assign codes during training (no
  DKM-style soft assignment).
- (ours) One P and one codebook per layer (as the per-layer codebooks of its PQF baseline).

Counts per quantised layer: parameters k d~ + m d~ (+ bias); code bytes n x itemsize(k) (uint8 up
to k = 256); ideal bits n ceil(log2 k) + 32 (k d~ + m d~ + bias), the same code bits as pq at the
same (k, m). Forward: the decoded codebook C P^T (2 k d~ m FLOPs, once per call), a gather, then
x W^T (2 B d_in d_out): executed is the math, so no `ideal_flops` is declared.

Choices (also in the report and docs):
- Knob k (centres per layer, clamped to n); m and d_tilde are hyper-parameters (defaults 8 and 4).
  Budgets count stored elements, where codes are index bytes, not elements: at one budget lr2vq
  (fewer floats per centre) gets a larger k, and more code bits, than pq. The paper's comparison
  is at equal bits: run pq and lr2vq at the same fixed `knobs` (k) and m, and read stored_bytes.
- `skip_above_break_even`, `target_modules`, `recover`, `kmeans_iters`: as in pq.
"""
from __future__ import annotations

from typing import Any

import torch

from lowdim_bench.api import Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench_builtin.methods._quantise import VqMethod, kmeans


def low_rank_representation(sub: torch.Tensor, d_tilde: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z, P): the rank-d_tilde least-squares fit sub ~ Z P^T, P with orthonormal columns."""
    evals, evecs = torch.linalg.eigh(sub.t() @ sub)  # ascending
    projection = evecs.flip(1)[:, :d_tilde].contiguous()
    return sub @ projection, projection


class Lr2vqMethod(VqMethod):
    name = "lr2vq"
    params = {**VqMethod.params, "d_tilde": Param(4, int, low=1, help="dimension of each subvector's code z (< m)")}
    description = "LR2VQ: subvectors w = P z (z in R^d~), k-means on z, per-layer codebook and projection; codes fixed."

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        d, m = self.hparams["d_tilde"], self.hparams["m"]
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= m:
            raise PluginError(f"lr2vq: d_tilde must be an integer in [1, m={m}], got {d!r}")

    def clustering_dim(self) -> int:
        return int(self.hparams["d_tilde"])

    def has_projection(self) -> bool:
        return True

    def encode(self, sub: torch.Tensor, k: int, generator: torch.Generator):
        z, projection = low_rank_representation(sub, self.clustering_dim())
        km = kmeans(z, k, int(self.hparams["kmeans_iters"]), generator)
        return km.centroids, km.codes, projection


@hookimpl
def register_methods(register) -> None:
    register(Lr2vqMethod)
