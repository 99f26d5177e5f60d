"""ctr and ctr-autoint: click-through-rate prediction on generated clicks or a Criteo-format file.

Quality is the test AUC (higher is better); the `ctr` metric adds the log loss (lower is
better) and, for generated data, the ceiling: the true model's AUC and log loss on the same test
rows and the population Bayes AUC (see _ctr_data). Sizes (rows, fields, vocabularies) and the
model are options, so a GPU user scales the task from the suite file to millions of rows.

Stages: "target" is scored; "source" (generated data only) has the same features with a shifted
click distribution (per-field and per-pair reweighting, another click rate), what adapt cells
pretrain on. The rows never depend on the run's seed (only on `data_seed`), so a seed changes
initialisation and batch order, as in digits-mlp.

`ctr-autoint` is the same task with `arch = "autoint"` by default: a suite names each task once,
so comparing the two architectures in one run needs two names.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import Measurement, MeasureContext, Metric, Param, PluginError, Quality, Recipe, Task
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.measure.params import count_params

from ._ctr_data import CtrGenerator, CtrSplit, GeneratorSpec, auc, file_digest, read_criteo
from ._ctr_models import CtrModel
from .digits_mlp import index_stream, model_device

EVAL_BATCH = 8192
STAGES = ("target", "source")

PARAMS: dict[str, Param] = {
    "data": Param("synthetic", choices=("synthetic", "criteo"), help="generated clicks, or a Criteo-format file (`path`)"),
    "path": Param("", str, help="Criteo-format file (label, 13 integer, 26 categorical columns, tab-separated)"),
    "min_count": Param(10, int, low=1, help="Criteo: tokens seen fewer times in training share one 'rare' id"),
    "max_rows": Param(0, int, low=0, help="Criteo: read at most this many rows (0: all)"),
    "n_train": Param(40_000, int, low=10, help="generated training rows per stage"),
    "n_val": Param(10_000, int, low=10, help="generated validation rows per stage"),
    "n_test": Param(20_000, int, low=10, help="generated test rows per stage"),
    "bayes_rows": Param(100_000, int, low=1000, help="fresh rows behind the Bayes AUC estimate"),
    "n_fields": Param(8, int, low=2, high=1000, help="categorical fields"),
    "vocab": Param(1000, int, low=2, help="vocabulary of the largest field"),
    "vocab_min": Param(20, int, low=2, help="vocabulary of the smallest field (sizes are geometric in between)"),
    "zipf": Param(1.1, float, low=0.0, high=4.0, help="power-law exponent of feature frequencies"),
    "ctr": Param(0.25, float, low=0.01, high=0.99, help="mean click rate of the source stage"),
    "first_order": Param(1.0, float, low=0.0, help="std of the first-order part of the logit"),
    "pairwise": Param(0.8, float, low=0.0, help="std of the planted pairwise interactions"),
    "high_order": Param(1.2, float, low=0.0, help="std of the planted high-order interactions"),
    "n_pairs": Param(6, int, low=0, help="planted field pairs"),
    "n_high": Param(3, int, low=0, help="planted high-order field tuples"),
    "high_degree": Param(3, int, low=3, help="fields per high-order tuple"),
    "rank": Param(4, int, low=1, help="latent rank of each planted interaction"),
    "shift": Param(1.0, float, low=0.0, help="size of the source -> target click-distribution shift"),
    "data_seed": Param(0, int, low=0, help="seed of the generated data (the run's seed never changes the rows)"),
    "arch": Param("mlp", choices=("mlp", "autoint"), help="embedding + MLP, or AutoInt's interacting layers"),
    "embed_dim": Param(16, int, low=1, help="embedding dimension per field"),
    "hidden": Param([64, 32], list[int], low=1, help="MLP hidden widths"),
    "att_layers": Param(3, int, low=1, help="AutoInt interacting layers"),
    "att_heads": Param(2, int, low=1, help="AutoInt attention heads"),
    "att_units": Param(32, int, low=1, help="AutoInt units per layer (all heads together)"),
    "steps": Param(400, int, low=0, help="pretraining steps"),
    "batch_size": Param(256, int, low=1, help="batch size of every recipe"),
    "lr": Param(1e-2, float, low=0.0, help="pretraining learning rate"),
    "finetune_steps": Param(200, int, low=0, help="adapt fine-tuning steps on the target stage"),
    "finetune_lr": Param(1e-2, float, low=0.0, help="adapt learning rate"),
    "recover_steps": Param(150, int, low=0, help="compress recovery fine-tuning steps"),
    "recover_lr": Param(1e-3, float, low=0.0, help="compress recovery learning rate"),
}


class CtrTask(Task):
    name = "ctr"
    quality = Quality(name="auc", unit="AUC", higher_is_better=True)
    params = PARAMS
    description = ("Click-through-rate prediction: F categorical fields with power-law frequencies, planted pairwise "
                   "and high-order interactions and a known Bayes AUC (or a Criteo-format file); field embeddings + "
                   "MLP (arch='mlp') or AutoInt. Target stage: a shifted click distribution. Quality: test AUC.")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["data"] == "criteo" and not o["path"]:
            raise PluginError(f"task {self.name!r}: data = 'criteo' needs the option `path` (a Criteo-format file)")
        if o["vocab_min"] > o["vocab"]:
            raise PluginError(f"task {self.name!r}: vocab_min {o['vocab_min']} exceeds vocab {o['vocab']}")
        if o["high_degree"] > o["n_fields"]:
            raise PluginError(f"task {self.name!r}: high_degree {o['high_degree']} exceeds n_fields {o['n_fields']}")
        if o["att_units"] % o["att_heads"]:
            raise PluginError(f"task {self.name!r}: att_units {o['att_units']} is not divisible by att_heads {o['att_heads']}")
        if not o["hidden"] and o["arch"] == "mlp":
            raise PluginError(f"task {self.name!r}: hidden must list at least one width for arch 'mlp'")
        self._splits: dict[str, dict[str, CtrSplit]] = {}

    # ---- data ---------------------------------------------------------------------------
    @functools.cached_property
    def generator(self) -> CtrGenerator:
        o = self.options
        spec = GeneratorSpec(**{k: o[k] for k in GeneratorSpec.__dataclass_fields__})
        return CtrGenerator(spec)

    @functools.cached_property
    def _criteo(self):
        return read_criteo(self.options["path"], self.options["min_count"], self.options["max_rows"])

    def vocab_sizes(self) -> list[int]:
        return self._criteo.vocab_sizes if self.options["data"] == "criteo" else self.generator.sizes

    def fingerprint(self) -> str:
        o = self.options
        if o["data"] == "criteo":
            text = f"criteo/v1 {file_digest(o['path'])} min_count={o['min_count']} max_rows={o['max_rows']}"
        else:
            text = f"{self.generator.fingerprint()} n={o['n_train']},{o['n_val']},{o['n_test']}"
        return hashlib.sha256(text.encode()).hexdigest()

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        if stage not in STAGES:
            raise PluginError(f"task {self.name!r}: unknown stage {stage!r}; known: {list(STAGES)}")
        if stage not in self._splits:
            if self.options["data"] == "criteo":
                if stage != "target":
                    raise PluginError(f"task {self.name!r}: a Criteo file has no shifted 'source' stage; "
                                      "adapt cells need data = 'synthetic'")
                self._splits[stage] = dict(self._criteo.splits)
            else:
                o, start, parts = self.options, 0, {}
                for part in ("train", "val", "test"):
                    n = o[f"n_{part}"]
                    parts[part] = self.generator.split(stage, part, n, start)
                    start += n
                self._splits[stage] = parts
        return dict(self._splits[stage])

    def feature_counts(self, stage: str = "target") -> list[torch.Tensor]:
        """Training-split count of every id of every field (frequency blocks, mixed dimensions)."""
        if self.options["data"] == "criteo":
            return list(self._criteo.counts)
        x = self.splits(stage, 0)["train"].x
        return [torch.bincount(x[:, f], minlength=v) for f, v in enumerate(self.vocab_sizes())]

    def bayes_auc(self, stage: str = "target") -> float | None:
        """The population AUC of the true click probability (None for a file)."""
        if self.options["data"] == "criteo":
            return None
        return _bayes_auc(self.generator, stage, self.options["bayes_rows"])

    # ---- model and training -------------------------------------------------------------
    def make_model(self, seed: int) -> nn.Module:
        o = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return CtrModel(self.vocab_sizes(), o["arch"], o["embed_dim"], list(o["hidden"]), o["att_layers"],
                            o["att_heads"], o["att_units"])

    def recipe(self, purpose: str) -> Recipe:
        o = self.options
        steps, lr = {"pretrain": ("steps", "lr"), "finetune": ("finetune_steps", "finetune_lr"),
                     "recover": ("recover_steps", "recover_lr")}.get(purpose, (None, None))
        if steps is None:
            raise PluginError(f"task {self.name!r}: unknown recipe purpose {purpose!r}; known: pretrain, finetune, recover")
        return Recipe(steps=o[steps], batch_size=o["batch_size"], lr=o[lr])

    def batches(self, split: CtrSplit, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        for idx in index_stream(len(split), batch_size, generator):
            yield split.x[idx], split.y[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = self.to_device(batch, model_device(model))
        return F.binary_cross_entropy_with_logits(model(x), y)

    def logits(self, model: nn.Module, split: CtrSplit) -> torch.Tensor:
        """The model's click logits over a whole split (eval mode, no grad), on the CPU."""
        was_training, device = model.training, model_device(model)
        model.eval()
        try:
            with torch.no_grad():
                out = [model(split.x[i:i + EVAL_BATCH].to(device)).float().cpu() for i in range(0, len(split), EVAL_BATCH)]
        finally:
            model.train(was_training)
        return torch.cat(out)

    def evaluate(self, model: nn.Module, split: CtrSplit) -> float:
        return auc(self.logits(model, split).numpy(), split.y.numpy())

    def predictions(self, model: nn.Module, split: CtrSplit) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-class logits [0, z] (softmax = sigmoid(z)) and int labels, for calibration metrics."""
        z = self.logits(model, split)
        return torch.stack([torch.zeros_like(z), z], dim=1), split.y.long()

    def features(self, model: nn.Module, split: CtrSplit) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not hasattr(model, "features"):
            return None
        device = model_device(model)
        with torch.no_grad():
            feats = [model.features(split.x[i:i + EVAL_BATCH].to(device)).float().cpu() for i in range(0, len(split), EVAL_BATCH)]
        return torch.cat(feats), split.y.long()

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(0)
        x = torch.stack([torch.randint(0, v, (batch_size,), generator=g) for v in self.vocab_sizes()], dim=1)
        return (x.to(device),)

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        (x,) = self.example_inputs(batch_size, device)
        y = torch.randint(0, 2, (batch_size,), generator=torch.Generator().manual_seed(1)).float()
        return x, y.to(device)


class CtrAutoIntTask(CtrTask):
    name = "ctr-autoint"
    params = {**PARAMS, "arch": Param("autoint", choices=("mlp", "autoint"), help=PARAMS["arch"].help)}
    description = "The ctr task with AutoInt (self-attentive feature interactions) as its default architecture."


@functools.lru_cache(maxsize=8)
def _bayes_auc(generator: CtrGenerator, stage: str, rows: int) -> float:
    return generator.bayes_auc(stage, rows)


def _logloss(z: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.binary_cross_entropy_with_logits(z.double(), y.double()))


class CtrMetric(Metric):
    """Log loss of the trained model on the target test split; the stored values of its embedding
    layer (`embed`: tables, codes, blocks and their projections; what DNIS and mixed dimensions
    are compared on); and for generated data the ceiling on the same rows: the true model's AUC
    and log loss, the population Bayes AUC and the model's AUC gap to the true model. The ctr
    data never depends on the run's seed, so the test split is the same in every cell."""

    name = "ctr"
    description = ("CTR log loss (lower is better), embedding parameters, and for generated data the Bayes ceiling: "
                   "the true model's AUC and log loss on the same test rows.")

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        task = ctx.task
        if not isinstance(task, CtrTask):
            raise PluginError(f"metric {self.name!r} measures ctr tasks only, not {task.name!r}")
        split = ctx.splits.get("test") or task.splits("target", 0)["test"]
        z = task.logits(ctx.model, split)
        out = [Measurement("logloss", _logloss(z, split.y), "nats", higher_is_better=False)]
        embed = getattr(ctx.model, "embed", None)
        if isinstance(embed, nn.Module):
            out.append(Measurement("params_embedding", count_params(embed).stored, "params", higher_is_better=False))
        if split.true_logit is not None:
            model_auc = auc(z.numpy(), split.y.numpy())
            true_auc = auc(split.true_logit.numpy(), split.y.numpy())
            out += [Measurement("logloss_bayes", _logloss(split.true_logit, split.y), "nats", higher_is_better=False),
                    Measurement("auc_bayes_test", true_auc, "AUC", higher_is_better=True),
                    Measurement("auc_bayes", float(task.bayes_auc("target")), "AUC", higher_is_better=True),
                    Measurement("auc_gap", true_auc - model_auc, "AUC", higher_is_better=False)]
        return out


@hookimpl
def register_tasks(register) -> None:
    register(CtrTask)
    register(CtrAutoIntTask)


@hookimpl
def register_metrics(register) -> None:
    register(CtrMetric)
