"""Maestro (Horvath et al. 2024, "Maestro: uncovering low-rank structures via trainable decomposition").

Each chosen nn.Linear W (d_out, d_in) becomes W = U V^T of inner rank r, initialised from the SVD
of W (the fresh init under `train`, the trained weight under `compress`): U = U_r S_r^1/2 (d_out x r),
V^T = S_r^1/2 V_r^T (r x d_in). Training adds, each step, on the batch the task's loss just saw:
- ordered dropout: one (layer, k) pair drawn uniformly over all pairs with 1 <= k <= r_layer (the
  official "per_layer" sampler), a second forward with only that layer's first k components, and
  the cross-entropy of that partial output against the full output's softmax (detached);
- lambda_gl x hierarchical group lasso: per layer, sum_i ||V_{i:}||_F + ||U_{:,i:}||_F (the tail
  norms from component i on), which presses the trailing components harder than the leading ones;
and every `prune_every` steps (the paper's "after each epoch") drops the components whose tail
importance ||V_{i:}||_F ||U_{:,i:}||_F is below `threshold`. That importance never rises with i,
so what is dropped is always a trailing block and what is kept a prefix. Pruning shrinks the
parameters themselves (and the optimizer's state with them), so counts, FLOPs and memory after
training are those of the final ranks; the `ranks` metric records them per layer.

Knob: the initial rank r. Why not lambda_gl: the harness meets a budget by counting the applied
model before training, and pruning only ever removes components, so the count at the initial
rank is an upper bound the trained model never exceeds; a lasso strength has no count until
after training. `params_stored` then reports where pruning ended (at or under the budget).

Official-code pitfalls avoided (each has a test in tests/test_method_maestro.py):
- the official script passes `--sampler` where the parser reads `--od-sampler` and parses with
  parse_known_args, so ordered dropout is silently off in its runs; here a misspelt
  hyper-parameter is an error, and ordered dropout runs every step unless `ordered_dropout = false`.

Choices: targets every Linear (`target_modules` "all", as `svd`), and, as `svd`, a layer whose
initial rank is at or above break-even (r (d_in + d_out) >= d_in d_out) stays dense, so a
factored model is never larger than the dense one. The official code's SGD is replaced by the
harness's AdamW (every method is tuned alike), under which the group lasso acts far harder than
with SGD: lambda_gl defaults to 1e-4, not the paper's 5e-3, which prunes digits-mlp to rank 0
(docs/methods-trained.md has the figures). `distill = "mse"` swaps the soft cross-entropy for a
squared error to the full output, for regression outputs.
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
from lowdim_bench.layers import as_rank, check_suffixes, copy_swapping, select_targets

# root model -> (args, kwargs, detached output) of its last training-mode forward: the batch the
# task's loss just used, which the ordered-dropout term needs (extra_loss only gets the model).
_LAST_CALL: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _remember_call(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    if module.training and torch.is_grad_enabled():
        _LAST_CALL[module] = (args, kwargs, output.detach() if isinstance(output, torch.Tensor) else output)


def _tail_norms(sq: torch.Tensor) -> torch.Tensor:
    """sqrt of the suffix sums of per-component squared norms `sq` (r,): entry i covers i..r-1.
    The clamp keeps the gradient finite when a tail is exactly zero."""
    return sq.flip(0).cumsum(0).flip(0).clamp_min(1e-30).sqrt()


class MaestroLinear(nn.Module):
    """y = U (V^T x) + b with inner rank `rank`; `od_rank` (set only during Maestro's partial forward)
    keeps the first k components."""

    def __init__(self, vt: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = vt.shape[1], u.shape[0]
        self.VT = nn.Parameter(vt)  # (r, d_in): the official in_network weight
        self.U = nn.Parameter(u)  # (d_out, r): the official out_network weight
        self.bias = None if bias is None else nn.Parameter(bias)
        self.od_rank: int | None = None

    @property
    def rank(self) -> int:
        return int(self.VT.shape[0])

    @property
    def weight(self) -> torch.Tensor:
        """U V^T (not stored), for parents that read `.weight` directly."""
        return self.U @ self.VT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.rank if self.od_rank is None else self.od_rank
        return F.linear(F.linear(x, self.VT[:k]), self.U[:, :k], self.bias)

    def group_lasso(self) -> torch.Tensor:
        """Hierarchical group lasso: sum over i of ||V_{i:}|| + ||U_{:,i:}|| (tail Frobenius norms)."""
        return _tail_norms(self.VT.pow(2).sum(1)).sum() + _tail_norms(self.U.pow(2).sum(0)).sum()

    @torch.no_grad()
    def tail_importance(self) -> torch.Tensor:
        """||V_{i:}|| ||U_{:,i:}|| per component i: non-increasing in i, so a threshold keeps a prefix."""
        return _tail_norms(self.VT.pow(2).sum(1)) * _tail_norms(self.U.pow(2).sum(0))

    @torch.no_grad()
    def importance(self) -> torch.Tensor:
        """||V_i|| ||U_i|| per component: its singular value when the factors are balanced."""
        return self.VT.norm(dim=1) * self.U.norm(dim=0)

    @torch.no_grad()
    def truncate_(self, k: int, optimizer: torch.optim.Optimizer | None) -> None:
        """Keep the first k components: the parameters shrink in place (same Parameter objects,
        so the optimizer keeps them) and so does their optimizer state."""
        for p, cut in ((self.VT, (slice(0, k),)), (self.U, (slice(None), slice(0, k)))):
            old_shape, kept = p.shape, p.data[cut].clone()
            # A dtype change makes autograd drop the parameter's gradient accumulator, which still
            # holds the old shape while the last step's graph lives (a shape change alone does not).
            p.data = p.data.to(torch.float64 if p.dtype != torch.float64 else torch.float32)
            p.data = kept
            p.grad = None
            state = optimizer.state.get(p) if optimizer is not None else None
            for key, t in (state or {}).items():
                if isinstance(t, torch.Tensor) and t.shape == old_shape:
                    state[key] = t[cut].clone()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def decompose(linear: nn.Linear, rank: int) -> MaestroLinear:
    """The rank-`rank` truncated SVD of `linear`, S^1/2 on each side (float64, cast back)."""
    w = linear.weight.detach()
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    like = {"device": w.device, "dtype": w.dtype}
    bias = None if linear.bias is None else linear.bias.detach().clone()
    return MaestroLinear((root[:, None] * vh[:rank]).to(**like), (u[:, :rank] * root[None, :]).to(**like), bias)


def maestro_layers(model: nn.Module) -> list[MaestroLinear]:
    return [m for m in model.modules() if isinstance(m, MaestroLinear)]


def soft_cross_entropy(partial: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `partial` logits against softmax(`full`) over the last dimension, averaged."""
    target = full.detach().float().softmax(-1)
    return -(target * partial.float().log_softmax(-1)).sum(-1).mean()


class MaestroMethod(Method):
    name = "maestro"
    kind = "train"
    kinds = ("train", "compress")
    knob = Knob("rank", 1, None, help="initial inner rank of every factored Linear; pruning only lowers it")
    params = {
        "lambda_gl": Param(1e-4, float, low=0.0,
                           help="weight of the hierarchical group lasso (paper 5e-3, with SGD; see docs)"),
        "threshold": Param(1e-5, float, low=0.0, help="prune components whose tail importance falls below this"),
        "prune_every": Param(0, int, low=0,
                             help="steps between pruning passes; 0: one epoch of the task's train split"),
        "ordered_dropout": Param(True, bool, help="the partial forward with one layer's first k components"),
        "distill": Param("ce", choices=("ce", "mse"), help="partial-output loss: soft cross-entropy (paper) or MSE"),
        "target_modules": Param("all", str | list[str], help='"all" Linears or a list of name suffixes'),
        "skip_above_break_even": Param(True, bool, help="leave a Linear dense when r (d_in + d_out) >= d_in d_out"),
        "recover": Param(True, bool, help="compress only: train the decomposition with the recover recipe"),
    }
    targets = ("Linear",)
    identity_at_init = False
    description = ("Maestro: W = U V^T from the SVD of the init, ordered dropout + hierarchical group lasso, "
                   "trailing components pruned during training; knob = initial rank.")

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        check_suffixes(self.hparams["target_modules"], "all", method=self.name, hparam="target_modules")
        self._optimizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._prune_every = int(self.hparams["prune_every"]) or 20
        self._last_step: int | None = None

    def select(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        return select_targets(model, self.hparams["target_modules"], self.name, skip_tied=True)

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        """1 to the largest rank at which some Linear is still factored (below break-even)."""
        def top(m: nn.Linear) -> int:
            d_in, d_out = m.in_features, m.out_features
            if self.hparams["skip_above_break_even"]:
                return (d_in * d_out - 1) // (d_in + d_out)
            return min(d_in, d_out)
        return 1, max(1, max(top(m) for _, m in self.select(model)))

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        swaps = []
        for _, lin in self.select(model):
            d_in, d_out = lin.in_features, lin.out_features
            r = min(rank, d_in, d_out)
            if self.hparams["skip_above_break_even"] and r * (d_in + d_out) >= d_in * d_out:
                continue
            swaps.append((lin, decompose(lin, r)))
        if not swaps:
            raise PluginError(f"maestro: at rank {rank} every Linear is at or above break-even and stays dense")
        new = copy_swapping(model, swaps)
        for p in new.parameters():
            p.requires_grad_(True)
        new.register_forward_hook(_remember_call, with_kwargs=True)
        self._schedule(ctx)
        return new

    def _schedule(self, ctx: ApplyContext) -> None:
        """Pruning period (one epoch unless set) and the last step, when the context says them."""
        recipe = ctx.recipe
        if recipe is None and ctx.task is not None:
            recipe = ctx.task.recipe("recover" if ctx.kind == "compress" else "pretrain")
        self._last_step = recipe.steps - 1 if recipe is not None else None
        if self.hparams["prune_every"] or ctx.task is None or recipe is None:
            return
        train = ctx.task.splits("target", ctx.seed).get("train")
        if hasattr(train, "__len__"):
            self._prune_every = max(1, math.ceil(len(train) / recipe.batch_size))

    # ---- training hooks -----------------------------------------------------------------
    def configure_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """The harness's AdamW, remembered so pruning can shrink its state with the parameters."""
        params = trainable(model)
        if not params:
            raise PluginError("maestro: the model has no trainable parameters")
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self._optimizers[model] = opt
        return opt

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        layers = maestro_layers(model)
        if not layers:
            return None
        total = self.hparams["lambda_gl"] * sum(m.group_lasso() for m in layers)
        call = _LAST_CALL.pop(model, None)
        if self.hparams["ordered_dropout"] and call is not None:
            total = total + self.partial_loss(model, layers, call)
        return total

    def partial_loss(self, model: nn.Module, layers: list[MaestroLinear], call: tuple) -> torch.Tensor:
        """One (layer, k) drawn uniformly over all pairs; the loss of that partial output vs the full one."""
        args, kwargs, full = call
        if not isinstance(full, torch.Tensor):
            raise PluginError("maestro: ordered dropout needs a model that returns a tensor, "
                              f"got {type(full).__name__}")
        widths = [m.rank for m in layers]
        if sum(widths) == 0:
            return full.new_zeros(())
        pick = int(torch.randint(sum(widths), (1,)))
        for layer, width in zip(layers, widths):
            if pick < width:
                layer.od_rank = pick + 1
                break
            pick -= width
        try:
            partial = model(*args, **kwargs)
        finally:
            layer.od_rank = None
            _LAST_CALL.pop(model, None)
        if self.hparams["distill"] == "mse":
            return F.mse_loss(partial, full)
        return soft_cross_entropy(partial, full)

    def on_step(self, model: nn.Module, step: int) -> None:
        if (step + 1) % self._prune_every == 0 or step == self._last_step:
            self.prune(model)

    def prune(self, model: nn.Module) -> list[int]:
        """Drop every trailing component whose tail importance is below the threshold; the ranks left."""
        opt = self._optimizers.get(model)
        for layer in maestro_layers(model):
            keep = int((layer.tail_importance() >= self.hparams["threshold"]).sum())
            if keep < layer.rank:
                layer.truncate_(keep, opt)  # opt None: no optimizer state to shrink (direct calls)
        return [m.rank for m in maestro_layers(model)]


@hookimpl
def register_methods(register) -> None:
    register(MaestroMethod)
