"""Hugging Face PEFT's tuners as lowdim-bench methods (`peft-lora`, `peft-loha`, `peft-lokr`, `peft-vera`).

Why: so a user can put our `lora` and PEFT's side by side on one suite and see whether they
agree (parameter count, outputs, quality) and what PEFT's wrapper costs in latency. This needs
the optional extra `pip install 'lowdim-bench[peft]'`. Without it, importing this module still
works and `register_methods` registers nothing: `lowdim-bench list plugins` shows the `peft`
plugin as ok with no methods (the registry has no "optional dependency missing" status).

PEFT is imported lazily, inside `apply`: `import peft` pulls in transformers (about 2.6 s on
the 2-core CPU box), and every process that loads the registry would pay it otherwise.

Mapping (choices where the issue was silent, also in docs):
- The knob is PEFT's `r` for every tuner here. Hyper-parameters map one to one: `alpha` ->
  `lora_alpha` (LoRA) / `alpha` (LoHa, LoKr); `dropout` -> `lora_dropout`; VeRA's `d_initial`.
  alpha defaults to 8 like our `lora` (PEFT's LoRA default; LoHa/LoKr's own default is 8 too).
- Targets: like our `lora`, every nn.Linear and nn.Conv2d (VeRA: nn.Linear only, PEFT has no
  conv VeRA), the head included, children of nn.MultiheadAttention left out; `target_modules`
  may instead list name suffixes. They reach PEFT as one full-match regex of the exact module
  names, so PEFT's own suffix matching cannot pick up a module we did not select.
- Base parameters, biases included, are frozen (PEFT's `bias="none"`), so trainable counts match.
- Initialisation draws from torch's global generator (PEFT has no generator argument); apply
  seeds it with the cell's seed inside `torch.random.fork_rng`, so a cell is reproducible and
  the caller's random state is untouched. VeRA's shared projections use the seed as PEFT's
  `projection_prng_key` (PEFT's default key is a constant 0) and are stored (`save_projection`).
- LoKr: `r` is the rank of the Kronecker product's second factor, which PEFT only factorises
  while r < max(out_k, in_n) / 2 (PEFT's factorisation of the layer's sizes) and stores full above
  that, so the count jumps up at that point. The knob's range stops below the first layer's jump,
  keeping the count monotone in r as the budget search needs.
- `merged_inference`: for_inference returns `merge_and_unload()`, the plain base model with the
  update folded in (dense cost); otherwise the PeftModel wrapper is measured as trained.

Left out: IA3 (no size knob), AdaLoRA (its schedule needs the run's `total_step`, which
ApplyContext does not carry), and the tuners that only take nn.Linear and have no rank knob.
PEFT's own behaviour is kept as is, including its conv LoRA form: lora_A ignores the base conv's
dilation and padding_mode (a dilated conv fails on a shape mismatch) and a grouped conv gets an
ungrouped A, so counts differ from our `lora` there.
"""
from __future__ import annotations

import copy
import importlib.util
import re
from importlib import metadata
from typing import Any, ClassVar

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, Param, PluginError
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import (ALPHA, DROPOUT, MERGED_INFERENCE, TARGET_MODULES, as_rank, check_suffixes, find_layers,
                                 split_by_suffixes)
from lowdim_bench_builtin.methods.lora import full_rank

MIN_PEFT = (0, 10)


def peft_available() -> bool:
    """True when the `peft` package can be imported (without importing it: that is slow)."""
    try:
        return importlib.util.find_spec("peft") is not None
    except (ImportError, ValueError):
        return False


def peft_version() -> tuple[int, ...]:
    """The installed peft's release numbers, e.g. (0, 21, 2); () when unknown."""
    try:
        raw = metadata.version("peft")
    except metadata.PackageNotFoundError:
        return ()
    return tuple(int(p) for p in re.findall(r"\d+", raw.split("+")[0])[:3])


def names_regex(names: list[str]) -> str:
    """A regex PEFT full-matches against module names: exactly these names and no others."""
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


class PeftMethod(Method):
    """Shared mechanics: select layers like our lora, deep-copy, build the PEFT config, wrap."""

    kind = "adapt"
    knob = Knob("rank", 1, None)
    identity_at_init = True
    layer_types: ClassVar[tuple[type, ...]] = (nn.Linear, nn.Conv2d)
    min_version: ClassVar[tuple[int, ...]] = MIN_PEFT
    preload = ("peft",)  # a warm server imports it once for the run, not once per cell

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        h = self.hparams
        check_suffixes(h["target_modules"], "all", method=self.name, hparam="target_modules")
        if "alpha" in h and not float(h["alpha"]) > 0:
            raise PluginError(f"{self.name}: alpha must be > 0, got {h['alpha']!r}")
        if "dropout" in h and not 0.0 <= float(h["dropout"]) < 1.0:
            raise PluginError(f"{self.name}: dropout must be in [0, 1), got {h['dropout']!r}")

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(name, module) of every layer this method adapts, in registration order."""
        found = [(n, m) for n, m in find_layers(model, self.layer_types) if n]
        tm = self.hparams["target_modules"]
        what = "/".join(t.__name__ for t in self.layer_types)
        if tm != "all":
            found, _ = split_by_suffixes(found, tm, method=self.name, hparam="target_modules", what=what)
        if not found:
            raise PluginError(f"{self.name}: the model has no {what} layer to adapt")
        return found

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        return 1, max(full_rank(m) for _, m in self.select(model))

    def peft_config(self, rank: int, targets: str, ctx: ApplyContext) -> Any:
        """The PEFT config object for this rank and these target modules."""
        raise NotImplementedError

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        rank = as_rank(size, self.name)
        if not peft_available():
            raise PluginError(f"{self.name} needs the optional extra: pip install 'lowdim-bench[peft]'")
        import peft

        new = copy.deepcopy(model)  # get_peft_model rewrites the model it is given
        targets = names_regex([n for n, _ in self.select(new)])
        config = self.peft_config(rank, targets, ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ctx.seed))
            wrapped = peft.get_peft_model(new, config)
        return wrapped

    def for_inference(self, model: nn.Module) -> nn.Module:
        if self.hparams.get("merged_inference") and hasattr(model, "merge_and_unload"):
            return model.merge_and_unload()
        return model


class PeftLora(PeftMethod):
    name = "peft-lora"
    params = {"alpha": ALPHA, "dropout": DROPOUT, "target_modules": TARGET_MODULES, "merged_inference": MERGED_INFERENCE}
    targets = ("Linear", "Conv2d")
    description = "PEFT's LoRA (peft.LoraConfig): frozen base + (alpha/r) B A on every Linear/Conv2d; needs lowdim-bench[peft]."

    def peft_config(self, rank: int, targets: str, ctx: ApplyContext) -> Any:
        import peft

        h = self.hparams
        return peft.LoraConfig(r=rank, lora_alpha=float(h["alpha"]), lora_dropout=float(h["dropout"]),
                               target_modules=targets, bias="none", init_lora_weights=True)


class PeftLoha(PeftMethod):
    name = "peft-loha"
    params = {"alpha": ALPHA, "target_modules": TARGET_MODULES, "merged_inference": MERGED_INFERENCE}
    targets = ("Linear", "Conv2d")
    description = "PEFT's LoHa (peft.LoHaConfig): Hadamard product of two rank-r updates, (alpha/r); needs lowdim-bench[peft]."

    def peft_config(self, rank: int, targets: str, ctx: ApplyContext) -> Any:
        import peft

        return peft.LoHaConfig(r=rank, alpha=float(self.hparams["alpha"]), target_modules=targets)


class PeftLokr(PeftMethod):
    name = "peft-lokr"
    params = {"alpha": ALPHA, "target_modules": TARGET_MODULES, "merged_inference": MERGED_INFERENCE}
    targets = ("Linear", "Conv2d")
    description = "PEFT's LoKr (peft.LoKrConfig): Kronecker product update with a rank-r factor; needs lowdim-bench[peft]."

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        """Up to the last r at which every layer still factorises its second Kronecker factor."""
        from peft.tuners.lokr.layer import factorization

        highs = []
        for _, m in self.select(model):
            if isinstance(m, nn.Linear):
                d_in, d_out = m.in_features, m.out_features
            else:
                d_in, d_out = m.in_channels // m.groups, m.out_channels
            largest = max(factorization(d_out, -1)[1], factorization(d_in, -1)[1])
            last_low = -(-largest // 2) - 1  # largest r with r < largest / 2
            if last_low >= 1:
                highs.append(last_low)
        return 1, min(highs) if highs else 1

    def peft_config(self, rank: int, targets: str, ctx: ApplyContext) -> Any:
        import peft

        return peft.LoKrConfig(r=rank, alpha=float(self.hparams["alpha"]), target_modules=targets)


class PeftVera(PeftMethod):
    name = "peft-vera"
    params = {"d_initial": Param(0.1, float, low=0.0, help="initial value of VeRA's scaling vector d"),
              "target_modules": TARGET_MODULES, "merged_inference": MERGED_INFERENCE}
    targets = ("Linear",)
    layer_types = (nn.Linear,)
    min_version = (0, 11)
    description = "PEFT's VeRA (peft.VeraConfig): shared frozen random A, B; trains per-layer scaling vectors; needs lowdim-bench[peft]."

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        if not float(self.hparams["d_initial"]) > 0:
            raise PluginError(f"{self.name}: d_initial must be > 0, got {self.hparams['d_initial']!r}")

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        """VeRA's r may exceed a layer's width (the paper uses 1024 on 768-wide layers); we stop at
        the largest d_in + d_out of an adapted layer."""
        return 1, max(m.in_features + m.out_features for _, m in self.select(model))

    def peft_config(self, rank: int, targets: str, ctx: ApplyContext) -> Any:
        import peft

        return peft.VeraConfig(r=rank, target_modules=targets, d_initial=float(self.hparams["d_initial"]),
                               projection_prng_key=int(ctx.seed), save_projection=True, vera_dropout=0.0)


METHODS: tuple[type[PeftMethod], ...] = (PeftLora, PeftLoha, PeftLokr, PeftVera)


@hookimpl
def register_methods(register) -> None:
    """Register each tuner the installed peft supports; nothing when peft is absent."""
    if not peft_available():
        return
    version = peft_version()
    for cls in METHODS:
        if version >= cls.min_version:
            register(cls)
