"""Click data for the ctr tasks: a generator with a known Bayes-optimal AUC, a Criteo reader, AUC.

Why a generator: real CTR logs cannot be downloaded here, and a synthetic set whose true click
probability is known gives every run its ceiling (the Bayes AUC), so "AUC 0.74" reads as "0.01
below the best any model can do", not as a bare number.

The generator (all draws from `data_seed`; a stage only changes the label function):
- Fields f = 0..F-1 with vocabularies from `vocab_min` to `vocab` (geometric), feature v of a
  field drawn with probability proportional to (v + 1)^-zipf: ids are frequency ranks (id 0 the
  most frequent), which the embedding methods rely on (frequency blocks are id ranges).
- logit(x) = b + s1 sum_f w_f[x_f]                                   (first order)
           + s2 sum_{(f,g) in pairs} <P_f[x_f], P_g[x_g]>             (planted pairs, rank r)
           + s3 sum_{(f1..fm) in tuples} sum_k prod_j Q_fj[x_fj, k]     (planted order-m terms)
  each component scaled to unit standard deviation on a reference sample, then to its strength;
  b is set so the mean click rate is `ctr`. The high-order tuples use the smaller (denser)
  fields, so they are learnable from the data at hand.
- The target stage is the source stage with a shifted click distribution: each field's first-
  order term and each pair term reweighted by 1 + shift * N(0, 1), and the bias moved.
- Bayes AUC: the AUC of the true probability p(x), estimated on `bayes_rows` fresh rows with soft
  labels (each row counts p as a positive and 1 - p as a negative, distinct pairs only): an
  unbiased estimate of the population AUC with far less noise than drawing labels.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lowdim_bench.api import PluginError

GENERATOR_VERSION = "ctr-gen/v1"
STAGE_OFFSET = {"source": 1, "target": 2}  # per-stage row streams of the generator
SPLITS = ("train", "val", "test")


@dataclass
class CtrSplit:
    """Rows of one split: field-local ids (n, F) int64, clicks (n,) float32 in {0, 1}, a global
    row number (n,) int64 (so two identical rows are still two samples), and for generated data
    the true click logit (n,) float32 (None for a file)."""

    x: torch.Tensor
    y: torch.Tensor
    row: torch.Tensor
    true_logit: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class GeneratorSpec:
    n_fields: int = 8
    vocab: int = 1000
    vocab_min: int = 20
    zipf: float = 1.1
    ctr: float = 0.25
    first_order: float = 1.0
    pairwise: float = 0.8
    high_order: float = 1.2
    n_pairs: int = 6
    n_high: int = 3
    high_degree: int = 3
    rank: int = 4
    shift: float = 1.0
    data_seed: int = 0

    def vocab_sizes(self) -> list[int]:
        sizes = np.exp(np.linspace(math.log(self.vocab_min), math.log(self.vocab), self.n_fields))
        return [int(round(s)) for s in sizes]


@dataclass
class Planted:
    """The label function's parameters (float64, numpy)."""

    probs: list[np.ndarray]
    w: list[np.ndarray]
    pairs: list[tuple[int, int]]
    p_vecs: list[np.ndarray]
    tuples: list[tuple[int, ...]]
    q_vecs: list[np.ndarray]
    scale: dict[str, float] = field(default_factory=dict)
    stage_weights: dict[str, tuple[np.ndarray, np.ndarray, float]] = field(default_factory=dict)


class CtrGenerator:
    """Samples rows and computes their true click logit for a stage ("source" or "target")."""

    def __init__(self, spec: GeneratorSpec) -> None:
        if spec.high_degree > spec.n_fields or spec.n_fields < 2:
            raise PluginError(f"task 'ctr': high_degree {spec.high_degree} needs at least that many fields "
                              f"(n_fields = {spec.n_fields}) and n_fields >= 2")
        self.spec = spec
        self.sizes = spec.vocab_sizes()
        rng = np.random.default_rng(spec.data_seed)
        probs = []
        for v in self.sizes:
            p = (np.arange(v) + 1.0) ** -spec.zipf
            probs.append(p / p.sum())
        f = spec.n_fields
        w = [rng.standard_normal(v) for v in self.sizes]
        all_pairs = [(a, b) for a in range(f) for b in range(a + 1, f)]
        pick = rng.choice(len(all_pairs), size=min(spec.n_pairs, len(all_pairs)), replace=False)
        pairs = [all_pairs[i] for i in sorted(pick)]
        p_vecs = [rng.standard_normal((v, spec.rank)) for v in self.sizes]
        dense_fields = np.argsort(self.sizes, kind="stable")[:max(spec.high_degree, f // 2 + 1)]
        tuples = [tuple(sorted(rng.choice(dense_fields, size=spec.high_degree, replace=False).tolist()))
                  for _ in range(spec.n_high)]
        q_vecs = [rng.standard_normal((v, spec.rank)) for v in self.sizes]
        self.planted = Planted(probs, w, pairs, p_vecs, tuples, q_vecs)
        # stage weights: per-field first-order and per-pair multipliers, and a bias offset
        shift_rng = np.random.default_rng([spec.data_seed, 7])
        field_mult = 1.0 + spec.shift * shift_rng.standard_normal(f)
        pair_mult = 1.0 + spec.shift * shift_rng.standard_normal(len(pairs))
        self.planted.stage_weights = {"source": (np.ones(f), np.ones(len(pairs)), 0.0),
                                      "target": (field_mult, pair_mult, 0.5 * spec.shift)}
        ref = self.sample_x(50_000, np.random.default_rng([spec.data_seed, 11]))
        parts = self._components(ref, "source")
        self.planted.scale = {k: 1.0 / max(float(np.std(v)), 1e-12) for k, v in parts.items()}
        self.bias = {stage: self._solve_bias(ref, stage) for stage in ("source", "target")}

    def sample_x(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, F) int64 ids, each field drawn from its power law (inverse-CDF sampling)."""
        cols = []
        for p in self.planted.probs:
            cdf = np.cumsum(p)
            cols.append(np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(p) - 1))
        return np.stack(cols, axis=1).astype(np.int64)

    def _components(self, x: np.ndarray, stage: str) -> dict[str, np.ndarray]:
        pl = self.planted
        field_mult, pair_mult, _ = pl.stage_weights[stage]
        first = sum(field_mult[f] * pl.w[f][x[:, f]] for f in range(x.shape[1]))
        pair = sum(pair_mult[i] * np.einsum("nk,nk->n", pl.p_vecs[a][x[:, a]], pl.p_vecs[b][x[:, b]])
                   for i, (a, b) in enumerate(pl.pairs)) if pl.pairs else np.zeros(len(x))
        high = np.zeros(len(x))
        for t in pl.tuples:
            prod = np.ones((len(x), self.spec.rank))
            for f in t:
                prod = prod * pl.q_vecs[f][x[:, f]]
            high = high + prod.sum(axis=1)
        return {"first": first, "pair": pair, "high": high}

    def _raw_logit(self, x: np.ndarray, stage: str) -> np.ndarray:
        s, sc = self.spec, self.planted.scale
        c = self._components(x, stage)
        return (s.first_order * sc["first"] * c["first"] + s.pairwise * sc["pair"] * c["pair"]
                + s.high_order * sc["high"] * c["high"])

    def _solve_bias(self, x: np.ndarray, stage: str) -> float:
        """The bias b with mean sigmoid(b + raw) = ctr on the reference sample (bisection), moved
        by the stage's bias offset."""
        raw = self._raw_logit(x, stage)
        lo, hi = -30.0, 30.0
        for _ in range(80):
            mid = (lo + hi) / 2
            if np.mean(1.0 / (1.0 + np.exp(-(mid + raw)))) < self.spec.ctr:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2 + self.planted.stage_weights[stage][2]

    def logit(self, x: np.ndarray, stage: str) -> np.ndarray:
        return self.bias[stage] + self._raw_logit(x, stage)

    def split(self, stage: str, part: str, n: int, row_start: int) -> CtrSplit:
        rng = np.random.default_rng([self.spec.data_seed, STAGE_OFFSET[stage], SPLITS.index(part)])
        x = self.sample_x(n, rng)
        z = self.logit(x, stage)
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.float32)
        return CtrSplit(torch.from_numpy(x), torch.from_numpy(y),
                        torch.arange(row_start, row_start + n, dtype=torch.int64), torch.from_numpy(z.astype(np.float32)))

    def bayes_auc(self, stage: str, rows: int) -> float:
        """Population AUC of the true click probability (soft labels on `rows` fresh rows)."""
        rng = np.random.default_rng([self.spec.data_seed, STAGE_OFFSET[stage], 99])
        z = self.logit(self.sample_x(rows, rng), stage)
        return soft_auc(z, 1.0 / (1.0 + np.exp(-z)))

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{GENERATOR_VERSION} {json.dumps(self.spec.__dict__, sort_keys=True)}".encode()).hexdigest()


# ---- AUC ------------------------------------------------------------------------------------

def auc(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """ROC AUC with ties counted half (Mann-Whitney on average ranks); NaN with one class only."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # here: scipy.stats costs 1.4 s at plugin load

    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def soft_auc(scores: np.ndarray, p: np.ndarray) -> float:
    """AUC when row i is a positive with weight p_i and a negative with weight 1 - p_i, over
    distinct pairs (i != j), ties half: sum_{i != j} p_i (1 - p_j) [s_i > s_j] / sum_{i != j} p_i (1 - p_j)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    order = np.argsort(s, kind="stable")
    s, p = s[order], p[order]
    q = 1.0 - p
    uniq, start = np.unique(s, return_index=True)
    pos_w = np.add.reduceat(p, start)
    neg_w = np.add.reduceat(q, start)
    neg_below = np.concatenate([[0.0], np.cumsum(neg_w)[:-1]])
    num = float(np.sum(pos_w * (neg_below + 0.5 * neg_w)))
    den = float(pos_w.sum() * neg_w.sum())
    self_pairs = float(np.sum(p * q))  # i == j: a row against itself, a tie counted half above
    return (num - 0.5 * self_pairs) / (den - self_pairs)


def auc_standard_error(a: float, n_pos: int, n_neg: int) -> float:
    """Hanley and McNeil's (1982) standard error of an empirical AUC."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


# ---- Criteo ---------------------------------------------------------------------------------

CRITEO_INT, CRITEO_CAT = 13, 26
CRITEO_SPLIT_SEED = 20240917
CRITEO_FRACTIONS = (0.8, 0.1, 0.1)  # random 8:1:1, as the AutoInt paper splits Criteo


def criteo_bucket(value: str) -> str:
    """An integer feature as a categorical token: floor(ln(v)^2) above 2 (the Criteo
    competition winners' transform), the value itself up to 2, "" when missing."""
    if value == "":
        return ""
    v = int(value)
    return f"b{int(math.floor(math.log(v) ** 2))}" if v > 2 else f"v{v}"


@dataclass
class CriteoData:
    splits: dict[str, CtrSplit]
    vocab_sizes: list[int]
    counts: list[torch.Tensor]  # training counts per id, non-increasing


def read_criteo(path: str | Path, min_count: int, max_rows: int) -> CriteoData:
    """Read a Criteo-format file: label, 13 integer and 26 categorical columns, tab-separated.

    Each field's vocabulary comes from the training rows: tokens seen at least `min_count`
    times, plus one "rare" token for the rest and for values unseen in training; ids are sorted
    by training count (id 0 the most frequent), the order the embedding methods rely on.
    """
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"task 'ctr': Criteo file {str(path)!r} does not exist (option `path`)")
    labels, columns = [], [[] for _ in range(CRITEO_INT + CRITEO_CAT)]
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if max_rows and len(labels) >= max_rows:
                break
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 1 + CRITEO_INT + CRITEO_CAT:
                raise PluginError(f"{path}:{lineno}: expected {1 + CRITEO_INT + CRITEO_CAT} tab-separated columns "
                                  f"(label, {CRITEO_INT} integer, {CRITEO_CAT} categorical), got {len(parts)}")
            if parts[0] not in ("0", "1"):
                raise PluginError(f"{path}:{lineno}: label must be 0 or 1, got {parts[0]!r}")
            labels.append(int(parts[0]))
            for j in range(CRITEO_INT):
                try:
                    columns[j].append(criteo_bucket(parts[1 + j]))
                except ValueError:
                    raise PluginError(f"{path}:{lineno}: integer column I{j + 1} holds {parts[1 + j]!r}") from None
            for j in range(CRITEO_CAT):
                columns[CRITEO_INT + j].append(parts[1 + CRITEO_INT + j])
    n = len(labels)
    if n < 10:
        raise PluginError(f"{path}: {n} rows; the ctr task needs at least 10 to split 8:1:1")
    perm = np.random.default_rng(CRITEO_SPLIT_SEED).permutation(n)
    n_train, n_val = int(CRITEO_FRACTIONS[0] * n), int(CRITEO_FRACTIONS[1] * n)
    parts_idx = {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
                 "test": np.sort(perm[n_train + n_val:])}
    train_rows = parts_idx["train"]
    x = np.zeros((n, len(columns)), dtype=np.int64)
    sizes, counts = [], []
    for j, col in enumerate(columns):
        arr = np.asarray(col, dtype=object)
        toks, cnt = np.unique(arr[train_rows].astype(str), return_counts=True)
        keep = cnt >= min_count
        rare_count = int(cnt[~keep].sum())
        vocab = list(zip(toks[keep].tolist(), cnt[keep].tolist())) + [("\0rare", rare_count)]
        vocab.sort(key=lambda tc: (-tc[1], tc[0]))
        ids = {tok: i for i, (tok, _) in enumerate(vocab)}
        rare = ids["\0rare"]
        x[:, j] = [ids.get(t, rare) for t in arr.astype(str).tolist()]
        sizes.append(len(vocab))
        counts.append(torch.tensor([c for _, c in vocab], dtype=torch.int64))
    y = np.asarray(labels, dtype=np.float32)
    splits = {k: CtrSplit(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), torch.from_numpy(idx.astype(np.int64)))
              for k, idx in parts_idx.items()}
    return CriteoData(splits, sizes, counts)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
