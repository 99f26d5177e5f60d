"""SSVI (Li et al. 2024, "Training Bayesian neural networks with sparse subspace variational inference").

Every chosen nn.Linear becomes a mean-field Gaussian layer on a sparse support: weights at the
support's entries are w ~ N(mu, softplus(rho)^2), every other weight is exactly zero and not
stored. Only mu and rho at the support are parameters (2 x density x |W|), the support is a
flat index buffer (int16/int32, counted in stored bytes), the bias stays deterministic. At
density 1 (`vi-dense` in the suites: dense mean-field VI) there is no index and W is dense.

Training (official code, ljb121002/SSVI):
- local reparameterisation: y = mu x + sqrt((sigma^2) (x^2) + 1e-8) eps, eps ~ N(0, 1) per output;
  eval mode (and `for_inference`) uses the mean weights (the official default evaluation);
- loss CE + kl_scale / N_train x min(1, 2 t / T) x KL(q || N(0, prior_std^2)) over the support
  (t the step, T the steps of the recipe: warm-up over the first half, as the official per-epoch
  min(2 epoch / epochs, 1));
- every `delta` steps while t < 0.75 T: drop the fraction alpha/2 (1 + cos(pi t / (0.75 T))) of
  each layer's support with the lowest SNR of |w| (E|w| / sd|w| of the folded normal), then grow
  as many entries where |dL/dW_mu| (the dense gradient of the last step) is largest among those
  not kept; a newly grown entry starts at mu = 0 and rho = the mean rho of the layer's kept
  entries; an entry dropped and grown back in the same update keeps its values. The optimizer's
  state follows the values (new entries start from zero state), as the official code masks momentum.

Choices (docs/methods-trained.md): every Linear is sparse (the official code keeps the first
conv dense, 0.02% of a ResNet-18; the first Linear of digits-mlp is a third of its weights).
The official SGD is the harness's AdamW, with no weight decay on rho (as the official's rho
group): decay would pull rho to 0, i.e. sigma to softplus(0) = 0.69. `mu_init` "model" (default)
keeps the fresh model's own init at the support (as RigL masks a dense init); "paper" draws
N(0, 0.01). The prior std defaults to 0.1, the KL scale to the official 0.01. The official prior
std 0.005 suits a ResNet with normalisation layers, whose weights' scale is free; on digits-mlp
(no normalisation, init weights of order 0.1, 1,078 training images) its KL pulls every weight
to ~0 and the net stays at chance: test accuracy 0.10 at density 0.1 and at 1.0, against 0.886
(prior std 0.1) and 0.897 (1.0) at density 0.1 (seed 0, lr 3e-3, 300 steps). Knob: density.
"""
from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError, trainable
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import check_suffixes, copy_swapping, select_targets

EPS_VAR = 1e-8


def index_dtype(numel: int) -> torch.dtype:
    for dtype in (torch.int16, torch.int32):
        if numel - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    return x.expm1().log()


def folded_snr(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E|w| / sd|w| for w ~ N(mu, sigma^2) (the official SNR_mean_abs drop score)."""
    mean_abs = mu * torch.erf(mu / (sigma * math.sqrt(2))) + sigma * math.sqrt(2 / math.pi) * torch.exp(
        -mu.pow(2) / (2 * sigma.pow(2)))
    var_abs = (sigma.pow(2) + mu.pow(2) - mean_abs.pow(2)).clamp_min(1e-30)
    return torch.nan_to_num(mean_abs / var_abs.sqrt(), nan=0.0)


class SSVILinear(nn.Module):
    """A Linear with Gaussian weights on a sparse support (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, support: torch.Tensor | None, mu: torch.Tensor,
                 rho: torch.Tensor, bias: torch.Tensor | None, prior_std: float) -> None:
        super().__init__()
        self.in_features, self.out_features, self.prior_std = in_features, out_features, prior_std
        self.mu = nn.Parameter(mu)
        self.rho = nn.Parameter(rho)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.dense = support is None
        if support is not None:
            self.register_buffer("indices", support.to(index_dtype(in_features * out_features)))
        self.capture_grad = False  # set by SSVI one step before a drop/grow update
        self.register_buffer("grow_score", None, persistent=False)

    @property
    def nnz(self) -> int:
        return self.mu.numel()

    def sigma(self) -> torch.Tensor:
        return F.softplus(self.rho)

    def flat_indices(self) -> torch.Tensor:
        if self.dense:
            return torch.arange(self.nnz, device=self.mu.device)
        return self.indices.long()

    def _matmul(self, values: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x2 (N, in) times the sparse (out, in) matrix holding `values` at the support: (N, out)."""
        if self.dense:
            return F.linear(x2, values.view(self.out_features, self.in_features))
        idx = self.indices.long()
        rows = torch.div(idx, self.in_features, rounding_mode="floor")
        w = torch.sparse_coo_tensor(torch.stack([rows, idx - rows * self.in_features]), values,
                                    (self.out_features, self.in_features), is_coalesced=True, check_invariants=False)
        return torch.sparse.mm(w, x2.t()).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        mean = self._matmul(self.mu, x2)
        if self.training:
            if self.capture_grad and mean.requires_grad:
                mean.register_hook(lambda g, x2=x2.detach(): self._grab(g, x2))
            std = torch.sqrt(self._matmul(self.sigma().pow(2), x2.pow(2)) + EPS_VAR)
            mean = mean + std * torch.randn_like(mean)
        y = mean if self.bias is None else mean + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def _grab(self, grad_out: torch.Tensor, x2: torch.Tensor) -> None:
        """|dL/dW_mu| at every entry of the dense W (transient; only for the grow criterion)."""
        self.grow_score = (grad_out.t() @ x2).abs().detach()

    def kl(self) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, prior_std^2)) summed over the support."""
        s, p = self.sigma(), self.prior_std
        return (math.log(p) - torch.log(s) + (s.pow(2) + self.mu.pow(2)) / (2 * p * p) - 0.5).sum()

    def dense_mean(self) -> torch.Tensor:
        """The mean weight as a dense (out, in) matrix, for tests and inspection; never stored."""
        w = torch.zeros(self.out_features * self.in_features, dtype=self.mu.dtype, device=self.mu.device)
        w[self.flat_indices()] = self.mu.detach()
        return w.view(self.out_features, self.in_features)

    @torch.no_grad()
    def drop_and_grow(self, fraction: float, optimizer: torch.optim.Optimizer | None) -> int:
        """One removal-and-addition update (module docstring); returns how many entries are new."""
        numel = self.in_features * self.out_features
        if self.dense or self.grow_score is None:
            return 0
        n_prune = int(self.nnz * fraction)
        if n_prune == 0:
            return 0
        old = self.indices.long()
        keep = folded_snr(self.mu, self.sigma()).topk(self.nnz - n_prune).indices
        score = self.grow_score.reshape(-1).clone()
        score[old[keep]] = -1.0  # kept entries are not candidates; dropped ones may come back
        grown = score.topk(n_prune).indices
        new = torch.cat([old[keep], grown]).sort().values
        # where each new entry's values come from: its old slot, or -1 for a new connection
        slot = torch.full((numel,), -1, dtype=torch.long, device=old.device)
        slot[old] = torch.arange(old.numel(), device=old.device)
        src = slot[new]
        fresh = src < 0
        rho_fill = self.rho[keep].mean()
        for p, fill in ((self.mu, 0.0), (self.rho, rho_fill)):
            values = p.data[src.clamp_min(0)].clone()
            values[fresh] = fill
            p.data = values
            state = optimizer.state.get(p) if optimizer is not None else None
            for key, t in (state or {}).items():
                if isinstance(t, torch.Tensor) and t.shape == values.shape:
                    moved = t[src.clamp_min(0)].clone()
                    moved[fresh] = 0
                    state[key] = moved
        self.indices = new.to(self.indices.dtype)
        self.grow_score = None
        return int(fresh.sum())

    def ideal_flops(self, x: torch.Tensor) -> int:
        """What the math needs: mean product, plus the variance product when sampling."""
        tokens = x.numel() // self.in_features
        return 2 * tokens * self.nnz * (2 if self.training else 1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"prior_std={self.prior_std}, bias={self.bias is not None}")


def ssvi_layers(model: nn.Module) -> list[SSVILinear]:
    return [m for m in model.modules() if isinstance(m, SSVILinear)]


class SSVIMethod(Method):
    name = "ssvi"
    kind = "train"
    knob = Knob("density", 0.0, 1.0, integer=False, help="share of each weight matrix in the support")
    params = {
        "prior_std": Param(0.1, float, low=1e-8, help="std of the N(0, s^2) prior (official 0.005: see docs)"),
        "kl_scale": Param(0.01, float, low=0.0,
                          help="KL weight before division by the training-set size (official 0.01)"),
        "sigma_init": Param(0.0006, float, low=1e-8,
                            help="mean of the initial |sigma| draw N(sigma_init, 0.0005) (official)"),
        "mu_init": Param("model", choices=("model", "paper"),
                         help="mu: the fresh model's init at the support, or N(0, 0.01)"),
        "delta": Param(100, int, low=2, help="steps between removal-and-addition updates"),
        "alpha": Param(0.3, float, low=0.0, high=1.0, help="initial drop fraction (cosine-decayed)"),
        "end_frac": Param(0.75, float, low=0.0, high=1.0, help="updates stop after this share of training"),
        "n_train": Param(0, int, low=0, help="training-set size for the KL scale; 0: len() of the task's train split"),
        "target_modules": Param("all", str | list[str], help='"all" Linears or a list of name suffixes'),
    }
    targets = ("Linear",)
    identity_at_init = False
    description = ("SSVI: mean-field Gaussian BNN on a sparse support (mu, rho only there), local reparameterisation, "
                   "KL with warm-up, SNR-drop / gradient-grow updates of the support; knob = density.")

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        check_suffixes(self.hparams["target_modules"], "all", method=self.name, hparam="target_modules")
        self._optimizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._step: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> last finished step
        self._total_steps = 0
        self._n_train = int(self.hparams["n_train"])

    def select(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        return select_targets(model, self.hparams["target_modules"], self.name, skip_tied=True)

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        smallest = min(m.weight.numel() for _, m in self.select(model))
        return 1.0 / smallest, 1.0

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if size is None or not 0.0 < float(size) <= 1.0:
            raise PluginError(f"method 'ssvi': density must be in (0, 1], got {size!r}")
        density, h = float(size), self.hparams
        support_gen = torch.Generator().manual_seed(int(ctx.seed))
        init_gen = torch.Generator().manual_seed(int(ctx.seed) + 1)
        swaps = []
        for name, lin in self.select(model):
            numel = lin.weight.numel()
            nnz = max(1, math.floor(density * numel))
            support = None if nnz == numel else torch.randperm(numel, generator=support_gen)[:nnz].sort().values
            flat = lin.weight.detach().reshape(-1)
            mu = flat.clone() if support is None else flat[support].clone()
            if h["mu_init"] == "paper":
                mu = torch.randn(nnz, generator=init_gen).to(mu) * 0.01
            sigma = (torch.randn(nnz, generator=init_gen) * 0.0005 + h["sigma_init"]).abs().clamp_min(1e-8)
            rho = softplus_inverse(sigma.double()).to(mu)
            bias = None if lin.bias is None else lin.bias.detach().clone()
            layer = SSVILinear(lin.in_features, lin.out_features, support, mu, rho, bias, h["prior_std"])
            swaps.append((lin, layer.to(lin.weight.device)))
        self._schedule(ctx)
        return copy_swapping(model, swaps)

    def _schedule(self, ctx: ApplyContext) -> None:
        recipe = ctx.recipe
        if recipe is None and ctx.task is not None:
            recipe = ctx.task.recipe("pretrain")
        self._total_steps = recipe.steps if recipe is not None else 0
        if not self._n_train and ctx.task is not None:
            train = ctx.task.splits("target", ctx.seed).get("train")
            self._n_train = len(train) if hasattr(train, "__len__") else 0

    # ---- training hooks -----------------------------------------------------------------
    def configure_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """AdamW; rho gets no weight decay (the official rho group has none)."""
        rhos = {id(m.rho) for m in ssvi_layers(model)}
        params = trainable(model)
        if not params:
            raise PluginError("ssvi: the model has no trainable parameters")
        groups = [{"params": [p for p in params if id(p) not in rhos], "weight_decay": weight_decay},
                  {"params": [p for p in params if id(p) in rhos], "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
        self._optimizers[model] = opt
        return opt

    def kl_weight(self, step: int) -> float:
        """kl_scale / N_train x the warm-up factor min(1, 2 (step + 1) / T)."""
        if not self._n_train:
            raise PluginError("ssvi: the training-set size is unknown (the task's train split has no len()); "
                              "set the hyper-parameter n_train")
        warm = min(1.0, 2.0 * (step + 1) / self._total_steps) if self._total_steps else 1.0
        return self.hparams["kl_scale"] / self._n_train * warm

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        layers = ssvi_layers(model)
        if not layers:
            return None
        step = self._step.get(model, -1) + 1
        return self.kl_weight(step) * sum(m.kl() for m in layers)

    def is_update(self, step: int) -> bool:
        """Whether the support is updated after (0-based) step `step`."""
        t = step + 1
        return t % self.hparams["delta"] == 0 and t < self.hparams["end_frac"] * self._total_steps

    def drop_fraction(self, step: int) -> float:
        t_end = self.hparams["end_frac"] * self._total_steps
        return self.hparams["alpha"] / 2 * (1 + math.cos(math.pi * (step + 1) / t_end))

    def on_step(self, model: nn.Module, step: int) -> None:
        self._step[model] = step
        layers = ssvi_layers(model)
        if self.is_update(step):
            frac, opt = self.drop_fraction(step), self._optimizers.get(model)
            for m in layers:
                m.drop_and_grow(frac, opt)
        arm = self.is_update(step + 1)
        for m in layers:
            m.capture_grad = arm


@hookimpl
def register_methods(register) -> None:
    register(SSVIMethod)
