"""DNIS, differentiable neural input search (Cheng et al. 2020): learnt embedding sizes per
frequency block.

Search form: each table's looked-up vector is scaled by a soft selection layer,
e = E[id] * alpha[block(id)], alpha of shape (frequency blocks x dimension groups), all ones at
the start (so the search model is the given model). Alternating updates, as in the paper (first
order, DARTS-style): each search step
  1. updates the model's weights (E, body, head; AdamW) on a training batch, task loss only;
  2. updates alpha (Adam) on a validation batch, task loss + l1 * sum |alpha|.
Then the (block, dimension group) entries are ranked by |alpha| and kept from the largest down
until the next would pass the budget (knob `dim` x the tables' feature count: the mean embedding
size); kept values are E * alpha (alpha folded in), stored per block with the indices of the
kept dimensions (BlockEmbedding, _embeddings.py), and the pruned model is what the harness then
trains ("fine-tuned after pruning").

Why the search runs inside `apply` and not through the training hooks: the harness sizes a cell
by counting the applied model (the budget search, the kit's budget_monotone check). The search
form stores every dimension plus alpha, more than the dense model, whatever the knob; pruning
inside training would make every count before training wrong. So `apply` runs the alternating
loop (search_steps steps on the cell's target splits, through the task's own batches and loss,
seeded by ctx.seed) and returns the pruned model, whose count is final. The search does not
depend on the knob, so it is cached per (initial weights, seed, device) and the budget search
only re-prunes. A suite that compares DNIS with methods trained for S steps gives DNIS's entry
S - search_steps steps (see suites/ctr.toml) so total training is equal.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import as_rank, copy_swapping

from ._embeddings import Block, BlockEmbedding, frequency_blocks, frequency_tables


class SoftSelect(nn.Module):
    """Search form of a table: E[id] * alpha[block(id)] (alpha expanded over dimension groups)."""

    def __init__(self, table: nn.Embedding, bounds: list[int], group: int) -> None:
        super().__init__()
        d = table.embedding_dim
        self.bounds, self.group = bounds, group
        self.weight = nn.Parameter(table.weight.detach().clone())
        self.register_buffer("inner", torch.tensor(bounds[1:-1], dtype=torch.int64, device=table.weight.device))
        self.alpha = nn.Parameter(torch.ones(len(bounds) - 1, math.ceil(d / group), device=table.weight.device,
                                             dtype=table.weight.dtype))

    def scale(self) -> torch.Tensor:
        """alpha per (block, dimension), (n_blocks, d)."""
        return self.alpha.repeat_interleave(self.group, dim=1)[:, :self.weight.shape[1]]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids] * self.scale()[torch.bucketize(ids.contiguous(), self.inner, right=True)]


def keep_entries(modules: list[SoftSelect], budget: int) -> set[tuple[int, int, int]]:
    """(table, block, group) entries kept: by |alpha| from the largest down, until the next one
    would take the stored values past `budget` (a threshold on |alpha|, so a larger budget keeps
    a superset)."""
    entries = []
    for t, m in enumerate(modules):
        a = m.alpha.detach().abs().cpu()
        d = m.weight.shape[1]
        for b in range(a.shape[0]):
            rows = m.bounds[b + 1] - m.bounds[b]
            for g in range(a.shape[1]):
                width = min(d, (g + 1) * m.group) - g * m.group
                entries.append((-float(a[b, g]), t, b, g, rows * width))
    entries.sort()
    kept, used = set(), 0
    for _, t, b, g, cost in entries:
        if used + cost > budget:
            break
        kept.add((t, b, g))
        used += cost
    return kept


def pruned_table(m: SoftSelect, t: int, kept: set[tuple[int, int, int]]) -> BlockEmbedding:
    """The stored form of one searched table: per block, E * alpha on the kept dimensions only."""
    d = m.weight.shape[1]
    scaled = (m.weight * m.scale()[torch.bucketize(torch.arange(m.weight.shape[0], device=m.weight.device),
                                                   m.inner, right=True)]).detach()
    blocks = []
    for b in range(len(m.bounds) - 1):
        dims = [j for g in range(m.alpha.shape[1]) if (t, b, g) in kept
                for j in range(g * m.group, min(d, (g + 1) * m.group))]
        if dims:
            lo, hi = m.bounds[b], m.bounds[b + 1]
            idx = torch.tensor(dims, dtype=torch.int64, device=m.weight.device)
            blocks.append(Block(lo, hi, scaled[lo:hi][:, idx].clone(), dims=idx))
    return BlockEmbedding(m.weight.shape[0], d, blocks)


def digest(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class DnisMethod(Method):
    name = "dnis"
    kind = "train"
    knob = Knob("dim", 1, None, help="mean embedding size: stored embedding values <= dim x features")
    params = {
        "n_blocks": Param(4, int, low=1, high=64, help="frequency blocks per table (geometric id ranges)"),
        "dim_group": Param(1, int, low=1, help="embedding dimensions per alpha entry"),
        "search_steps": Param(500, int, low=1, help="alternating search steps before pruning (inside apply)"),
        "search_lr": Param(0.0, float, low=0.0, help="learning rate of the weights during search (0: the task's pretrain lr)"),
        "alpha_lr": Param(1e-2, float, low=0.0, help="learning rate of alpha (Adam) on validation batches"),
        "l1": Param(1e-4, float, low=0.0, help="L1 penalty on alpha in the validation loss"),
    }
    targets = ("Embedding",)
    identity_at_init = False
    description = ("DNIS: soft selection alpha per (frequency block x dimension) searched by alternating train/validation "
                   "updates with an L1 penalty, then pruned by |alpha| to `dim` values per feature and fine-tuned.")

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self._search: tuple[tuple, nn.Module] | None = None

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(t.embedding_dim for _, t in frequency_tables(model, self.name))

    def search_model(self, model: nn.Module) -> nn.Module:
        """A copy of `model` with every table in its soft-selection form."""
        h = self.hparams
        swaps = [(t, SoftSelect(t, frequency_blocks(t.num_embeddings, h["n_blocks"]), h["dim_group"]))
                 for _, t in frequency_tables(model, self.name)]
        return copy_swapping(model, swaps)

    def search(self, model: nn.Module, ctx: ApplyContext) -> nn.Module:
        """The searched soft-selection model (cached per initial weights, seed and device)."""
        key = (digest(model), ctx.seed, str(ctx.device), tuple(sorted(self.hparams.items())))
        if self._search is not None and self._search[0] == key:
            return self._search[1]
        if ctx.task is None:
            raise PluginError("dnis: the search needs ApplyContext.task (its splits, batches and loss)")
        task, h = ctx.task, self.hparams
        soft = self.search_model(model).to(ctx.device).train()
        alphas = [m.alpha for m in soft.modules() if isinstance(m, SoftSelect)]
        ids = {id(a) for a in alphas}
        weights = [p for p in soft.parameters() if id(p) not in ids and p.requires_grad]
        recipe = task.recipe("pretrain")
        opt_w = torch.optim.AdamW(weights, lr=h["search_lr"] or recipe.lr, weight_decay=recipe.weight_decay)
        opt_a = torch.optim.Adam(alphas, lr=h["alpha_lr"])
        splits = task.splits("target", ctx.seed)
        train_it = task.batches(splits["train"], recipe.batch_size, torch.Generator().manual_seed(ctx.seed))
        val_it = task.batches(splits["val"], recipe.batch_size, torch.Generator().manual_seed(ctx.seed + 1))
        for _ in range(h["search_steps"]):
            loss = task.loss(soft, task.to_device(next(train_it), ctx.device))  # 1. weights, training batch
            opt_w.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(weights, recipe.grad_clip)
            opt_w.step()
            val = task.loss(soft, task.to_device(next(val_it), ctx.device))  # 2. alpha, validation batch
            val = val + h["l1"] * sum(a.abs().sum() for a in alphas)
            opt_a.zero_grad(set_to_none=True)
            val.backward(inputs=alphas)
            opt_a.step()
            if not math.isfinite(float(val.detach())):
                raise PluginError(f"dnis: the search loss became {float(val.detach())}")
        soft.eval().requires_grad_(False)
        self._search = (key, soft)
        return soft

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        dim = as_rank(size, self.name)
        soft = self.search(model, ctx)
        modules = [m for m in soft.modules() if isinstance(m, SoftSelect)]
        budget = sum(m.weight.shape[0] * min(dim, m.weight.shape[1]) for m in modules)
        kept = keep_entries(modules, budget)
        pruned = copy_swapping(soft, [(m, pruned_table(m, t, kept)) for t, m in enumerate(modules)])
        return pruned.requires_grad_(True).to(next(model.parameters()).device)

    def masks(self, model: nn.Module, size: float, ctx: ApplyContext) -> list[torch.Tensor]:
        """The learnt keep-masks (n_blocks, d) per table at a knob value (for reports and tests)."""
        soft = self.search(model, ctx)
        modules = [m for m in soft.modules() if isinstance(m, SoftSelect)]
        kept = keep_entries(modules, sum(m.weight.shape[0] * min(int(size), m.weight.shape[1]) for m in modules))
        out = []
        for t, m in enumerate(modules):
            mask = torch.zeros(len(m.bounds) - 1, m.weight.shape[1], dtype=torch.bool)
            for (tt, b, g) in kept:
                if tt == t:
                    mask[b, g * m.group:(g + 1) * m.group] = True
            out.append(mask)
        return out


@hookimpl
def register_methods(register) -> None:
    register(DnisMethod)
