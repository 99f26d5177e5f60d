"""LR2VQ (Zhu, Zhou and Zhong 2022, "Learning Low-Rank Representations for Model Compression").

What we could confirm (the paper's abstract, and summaries of the paper; the text of section 3
itself was not readable in the corpora we could search, so the details marked (ours) are our
reading, not the paper's words): a weight is cut into subvectors of size m; each gets a
low-rank representation (LRR) z in R^d~ (d~ < m) with a learnt linear map back to m values,
w = P z; the z, not the w, are clustered into k centres; the building block is optimised end to
end on the task loss; the method needs a low-rank pre-training stage before quantisation (a
limitation the summaries list); three hyper-parameters k, m and d~, the compression ratio set by
m and accuracy by d~, which trades low-rank approximation error (small d~) against clustering
error (large d~), so accuracy against d~ peaks in between. The baselines are PQF and vanilla
DKM. Not confirmed: how P and Z are initialised, whether P is per layer, and whether fine-tuning
re-assigns codes (DKM-style soft assignment) - see (ours) below.

Why the training stage matters: with an orthonormal P fixed by PCA of the trained weight,
||S - C P^T||^2 = ||S (I - P P^T)||^2 + ||Z - C||^2, so clustering Z can never beat plain PQ at
equal k (our first version did exactly that and its claim failed by construction). Learning
w = P z on the task loss first lets the network move its weights toward what d~ dimensions can
hold before the clustering error is paid.

What we implement (compress: trained model -> apply -> optional recovery fine-tune):
- apply, low-rank stage (`lowrank_steps` > 0, the default): every quantised Linear becomes
  W = reshape(Z P^T), Z (n x d~) and P (m x d~) initialised by PCA of its subvectors S (P = top
  d~ eigenvectors of S^T S, Z = S P: the best rank-d~ fit, so the stage starts where the
  closed form ends); the whole network (Z, P, biases, the other layers) is then trained on the
  task's loss for `lowrank_steps` AdamW steps at `lowrank_lr` (constant, gradient norm clipped to
  1), on the target stage's training split with the task's "recover" batch size. (ours) Plain
  AdamW, no schedule; the paper's pre-training recipe is not known to us.
- apply, clustering: k-means++ then Lloyd (float64, seeded; _quantise.kmeans) on the learnt Z
  gives the codebook C (k x d~) and the codes; P is the learnt P. The layer's weight is
  reshape((C P^T)[codes]). With `lowrank_steps = 0` Z and P are the PCA fit (the closed form).
- recovery (`recover = true`): end-to-end fine-tuning of C, P and the bias on the task loss with
  the codes frozen (hard assignments, gradients summed over each centre's subvectors). (ours) We
  do not re-assign codes during training (no DKM soft assignment).
- (ours) One P and one codebook per layer (as the per-layer codebooks of its PQF baseline). A
  layer left dense by `skip_above_break_even` keeps its stage-trained weight reshape(Z P^T).
- The stage does not depend on k, so it runs once per (model, seed, settings) and is reused by
  every k a budget search tries.

Counts per quantised layer: parameters k d~ + m d~ (+ bias); code bytes n x itemsize(k) (uint8 up
to k = 256); ideal bits n ceil(log2 k) + 32 (k d~ + m d~ + bias), the same code bits as pq at the
same (k, m). Forward: the decoded codebook C P^T (2 k d~ m FLOPs, once per call), a gather, then
x W^T (2 B d_in d_out): executed is the math, so no `ideal_flops` is declared.

Choices (also in the report and docs):
- Knob k (centres per layer, clamped to n); m and d_tilde are hyper-parameters (defaults 8 and 4).
  Budgets count stored elements, where codes are index bytes, not elements: at one budget lr2vq
  (fewer floats per centre) gets a larger k, and more code bits, than pq. The paper's comparison
  is at equal bits: run pq and lr2vq at the same fixed `knobs` (k) and m, and read stored_bytes.
  The stage is extra training: give pq as many more recovery steps for a comparison at equal
  training (suites/paper-checks.toml does).
- `skip_above_break_even`, `target_modules`, `recover`, `kmeans_iters`: as in pq.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from lowdim_bench.api import ApplyContext, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import copy_swapping
from lowdim_bench_builtin.methods._quantise import VqMethod, kmeans, to_subvectors

# base model -> (settings, stage-trained model, {layer name: (Z, P)}); see _stage
_STAGE_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def low_rank_representation(sub: torch.Tensor, d_tilde: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z, P): the rank-d_tilde least-squares fit sub ~ Z P^T, P with orthonormal columns."""
    evals, evecs = torch.linalg.eigh(sub.t() @ sub)  # ascending
    projection = evecs.flip(1)[:, :d_tilde].contiguous()
    return sub @ projection, projection


class LowRankRepLinear(nn.Module):
    """A Linear whose weight is reshape(Z P^T): n subvectors of size m, each w = P z (training stage)."""

    def __init__(self, linear: nn.Linear, m: int, d_tilde: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        z, p = low_rank_representation(to_subvectors(linear.weight.detach().double().cpu(), m), d_tilde)
        self.Z = nn.Parameter(z.to(**like))
        self.P = nn.Parameter(p.to(**like))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return (self.Z @ self.P.t()).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def as_linear(self) -> nn.Linear:
        """The trained low-rank weight as a plain Linear (what the clustering reads)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.Z.device, dtype=self.Z.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


def train_stage(model: nn.Module, task: Any, seed: int, steps: int, lr: float, device: torch.device) -> list[float]:
    """`steps` AdamW steps (constant lr, clip 1) of every float parameter on the task's loss,
    on the target stage's training split; returns the losses. Non-finite loss: PluginError."""
    split = task.splits("target", seed)["train"]
    batch_size = int(task.recipe("recover").batch_size)
    batches = task.batches(split, batch_size, torch.Generator().manual_seed(seed + 2))
    params = [p for p in model.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        loss = task.loss(model, task.to_device(next(batches), device))
        if not torch.isfinite(loss):
            raise PluginError(f"lr2vq: the low-rank stage's loss became {float(loss)} at step {step}; "
                              f"lower lowrank_lr (now {lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


class Lr2vqMethod(VqMethod):
    name = "lr2vq"
    params = {**VqMethod.params,
              "d_tilde": Param(4, int, low=1, help="dimension of each subvector's code z (< m)"),
              "lowrank_steps": Param(200, int, low=0, help="low-rank training steps (w = P z learnt on the task loss) "
                                     "before clustering; 0: the closed-form PCA fit"),
              "lowrank_lr": Param(1e-3, float, low=1e-12, help="learning rate of the low-rank stage (AdamW)")}
    description = ("LR2VQ: subvectors w = P z (z in R^d~) trained on the task loss, then k-means on z; per-layer "
                   "codebook and projection; codes fixed.")

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        d, m = self.hparams["d_tilde"], self.hparams["m"]
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= m:
            raise PluginError(f"lr2vq: d_tilde must be an integer in [1, m={m}], got {d!r}")
        self._reps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def clustering_dim(self) -> int:
        return int(self.hparams["d_tilde"])

    def has_projection(self) -> bool:
        return True

    def encode(self, sub: torch.Tensor, k: int, generator: torch.Generator):
        z, projection = low_rank_representation(sub, self.clustering_dim())
        km = kmeans(z, k, int(self.hparams["kmeans_iters"]), generator)
        return km.centroids, km.codes, projection

    def encode_layer(self, name: str, linear: nn.Linear, sub: torch.Tensor, k: int, generator: torch.Generator):
        if name not in self._reps:
            return self.encode(sub, k, generator)
        z, projection = self._reps[name]
        km = kmeans(z, k, int(self.hparams["kmeans_iters"]), generator)
        return km.centroids, km.codes, projection

    def _stage(self, model: nn.Module, ctx: ApplyContext) -> tuple[nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """The model after the low-rank stage (every selected Linear at its trained reshape(Z P^T))
        and each layer's trained (Z, P) in float64 on the CPU; cached per base model and settings."""
        h = self.hparams
        key = (int(ctx.seed), h["m"], h["d_tilde"], h["lowrank_steps"], h["lowrank_lr"], str(h["target_modules"]),
               str(ctx.device))
        hit = _STAGE_CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        if ctx.task is None:
            raise PluginError("lr2vq: the low-rank stage trains on the task's loss and needs the task "
                              "(ApplyContext.task); set lowrank_steps = 0 for the closed-form fit")
        layers = {name: LowRankRepLinear(lin, int(h["m"]), int(h["d_tilde"])) for name, lin in self.select(model)}
        by_module = dict(self.select(model))
        staged = copy_swapping(model, [(by_module[n], layer) for n, layer in layers.items()])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ctx.seed) + 2)
            train_stage(staged, ctx.task, int(ctx.seed), int(h["lowrank_steps"]), float(h["lowrank_lr"]), ctx.device)
        reps = {n: (layer.Z.detach().double().cpu(), layer.P.detach().double().cpu()) for n, layer in layers.items()}
        plain = copy_swapping(staged, [(layer, layer.as_linear()) for layer in layers.values()])
        _STAGE_CACHE[model] = (key, plain, reps)
        return plain, reps

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if int(self.hparams["lowrank_steps"]) == 0:
            self._reps = {}
            return super().apply(model, size, ctx)
        staged, self._reps = self._stage(model, ctx)
        try:
            return super().apply(staged, size, ctx)
        finally:
            self._reps = {}


@hookimpl
def register_methods(register) -> None:
    register(Lr2vqMethod)
