"""The ctr tasks' models: field embeddings, then an MLP or AutoInt's interacting layers, then a head.

Both take ids (B, F) (field-local, frequency-ordered) and return one click logit per row (B,).
Methods reach the parts by name: `embed.tables.<f>` (one nn.Embedding per field, so a method
may swap any table for a module mapping ids (B,) -> vectors (B, d_f)), `body`, `head`.

Two declarations the embedding methods read (plugins/methods/_embeddings.py):
- `ids_by_frequency = True`: id 0 of every table is its most frequent feature, so frequency
  blocks are id ranges (DNIS, mixed dimensions);
- `embedding_consumer()`: for the MLP, the first body Linear reads the concatenation of the
  field vectors in field order, so a low-rank table E' U^T can fold U into it (AFM, SVD); AutoInt
  shares its projections across fields, so it returns None and methods keep U explicit.

AutoInt follows the official code (shichence/AutoInt model.py), which differs from the paper's
equations in three places: Q, K, V and the residual projection are Linears with bias followed by
ReLU, scores are scaled by 1/sqrt(d_head), and each layer ends with a layer norm. Embeddings start
at N(0, 0.01), as there.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EMBED_INIT_STD = 0.01


class FieldEmbedding(nn.Module):
    """One table per field; returns the list of per-field vectors (each (B, d_f))."""

    def __init__(self, vocab_sizes: list[int], dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, dim) for v in vocab_sizes)
        for t in self.tables:
            nn.init.normal_(t.weight, std=EMBED_INIT_STD)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [table(x[:, f]) for f, table in enumerate(self.tables)]


class InteractingLayer(nn.Module):
    """One AutoInt layer over field vectors (B, F, d_in) -> (B, F, units)."""

    def __init__(self, d_in: int, units: int, heads: int) -> None:
        super().__init__()
        if units % heads:
            raise ValueError(f"AutoInt: att_units {units} must be divisible by att_heads {heads}")
        self.heads = heads
        self.query = nn.Linear(d_in, units)
        self.key = nn.Linear(d_in, units)
        self.value = nn.Linear(d_in, units)
        self.residual = nn.Linear(d_in, units)
        self.norm = nn.LayerNorm(units)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        b, f, _ = e.shape
        q, k, v = (F.relu(lin(e)).view(b, f, self.heads, -1).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, f, -1)
        return self.norm(F.relu(out + F.relu(self.residual(e))))


class CtrModel(nn.Module):
    """embed -> body -> head. arch "mlp": body is Linear/ReLU layers over the concatenated field
    vectors; arch "autoint": body is stacked InteractingLayers, flattened."""

    ids_by_frequency = True

    def __init__(self, vocab_sizes: list[int], arch: str, embed_dim: int, hidden: list[int],
                 att_layers: int, att_heads: int, att_units: int) -> None:
        super().__init__()
        self.arch = arch
        self.embed = FieldEmbedding(vocab_sizes, embed_dim)
        n_fields = len(vocab_sizes)
        if arch == "mlp":
            layers: list[nn.Module] = []
            width = n_fields * embed_dim
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            self.body = nn.Sequential(*layers)
        elif arch == "autoint":
            dims = [embed_dim] + [att_units] * att_layers
            self.body = nn.Sequential(*(InteractingLayer(dims[i], dims[i + 1], att_heads) for i in range(att_layers)))
            width = n_fields * dims[-1]
        else:
            raise ValueError(f"unknown arch {arch!r}; known: mlp, autoint")
        self.head = nn.Linear(width, 1)

    def embedding_consumer(self) -> tuple[str, list[str]] | None:
        """(name of the Linear that reads the concatenated field vectors, table names in
        concatenation order), or None when no single Linear does (AutoInt)."""
        if self.arch != "mlp" or not len(self.body):
            return None
        return "body.0", [f"embed.tables.{f}" for f in range(len(self.embed.tables))]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input (penultimate features)."""
        vecs = self.embed(x)
        if self.arch == "mlp":
            return self.body(torch.cat(vecs, dim=-1))
        return self.body(torch.stack(vecs, dim=1)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)
