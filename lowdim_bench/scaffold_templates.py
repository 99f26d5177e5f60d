"""Text of the files `lowdim-bench new-plugin` writes (string.Template: $name, $module, $cls, $dist, $kind).

Each plugin template is a small, correct example of its kind, written only against the public
API (lowdim_bench.api, lowdim_bench.hookspecs, lowdim_bench.testing), so an author edits a
working plugin rather than filling a blank. Longer than our usual module limit because it is
file text, one template per kind; tests/test_scaffold.py runs the kit on each.
"""
from __future__ import annotations

PYPROJECT = '''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "lowdim-bench plugin: $name ($kind)"
requires-python = ">=3.10"
dependencies = ["lowdim-bench>=0.1"]

[project.optional-dependencies]
test = ["pytest>=8"]

# The entry point is how lowdim-bench finds the plugin (group `lowdim_bench`).
[project.entry-points.lowdim_bench]
$name = "$module.plugin"

[tool.setuptools]
packages = ["$module"]

[tool.setuptools.package-data]
$module = ["suites/*.toml"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

README = '''# $dist

A lowdim-bench plugin providing the $kind `$name`.

```sh
pip install -e .                 # into the environment that has lowdim-bench
lowdim-bench list plugins        # $name is listed, status ok
lowdim-bench run $name-smoke     # the suite this plugin ships ($module/suites/)
python -m pytest -q              # the conformance kit's checks (lowdim_bench.testing)
```

Edit `$module/plugin.py`; keep `tests/` passing. The authoring guide is docs/plugins.md in
lowdim-bench (hooks, the conformance checks, the record schema, versioning rules).
'''

INIT = '''"""lowdim-bench plugin $name: the plugin itself is $module.plugin (the entry point)."""
'''

SUITE_HOOK = '''

@hookimpl
def suite_paths() -> list[str]:
    """The suites this plugin ships ($name-smoke)."""
    return [str(Path(__file__).parent / "suites")]
'''

ADAPT = '''"""$name: a low-rank adapter (the scaffold's adapt example; make it your method).

y = W0 x + B A x on every nn.Linear, W0 frozen, A Kaiming-uniform(a=sqrt 5), B = 0, so the
adapted model equals the base at step 0 (identity_at_init). Trainable parameters per Linear:
rank (d_in + d_out).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, PluginError
from lowdim_bench.hookspecs import hookimpl


class LowRankAdapter(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.A = nn.Parameter(a.to(**like))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, **like))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.A), self.B)


def linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


class ${cls}Method(Method):
    name = "$name"
    kind = "adapt"
    knob = Knob("rank", 1, None)
    targets = ("Linear",)
    identity_at_init = True
    description = "Low-rank adapter y = W0 x + B A x on every Linear; W0 frozen, B = 0 at start."

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        found = linears(model)
        if not found:
            raise PluginError(f"{self.name}: the model has no nn.Linear to adapt")
        return 1, max(min(m.in_features, m.out_features) for _, m in found)

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if size is None or int(size) < 1:
            raise PluginError(f"{self.name}: rank must be an integer >= 1, got {size!r}")
        new = copy.deepcopy(model)  # never change the caller's model
        new.requires_grad_(False)  # adapt: the base is frozen
        gen = torch.Generator().manual_seed(int(ctx.seed))  # ctx.seed, not the global RNG
        for name, linear in linears(new):
            replace(new, name, LowRankAdapter(linear, int(size), gen))
        return new


@hookimpl
def register_methods(register) -> None:
    register(${cls}Method)
'''

COMPRESS = '''"""$name: truncated-SVD compression (the scaffold's compress example; make it your method).

Each nn.Linear W (d_out, d_in) becomes second(first(x)) with first = S_r^1/2 V_r^T and
second = U_r S_r^1/2 (+ the bias), r = min(rank, d_in, d_out): r (d_in + d_out) parameters.
A layer whose factors would not be smaller than W stays dense, so the count grows with rank
up to the dense count and no further.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, PluginError
from lowdim_bench.hookspecs import hookimpl


def linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def factor(linear: nn.Linear, rank: int) -> nn.Sequential:
    u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(linear.in_features, rank, bias=False)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root[None, :])
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second).to(linear.weight.dtype)


class ${cls}Method(Method):
    name = "$name"
    kind = "compress"
    knob = Knob("rank", 1, None)
    targets = ("Linear",)
    description = "Truncated SVD: each Linear as two of rank r (layers where that is not smaller stay dense)."

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        found = linears(model)
        if not found:
            raise PluginError(f"{self.name}: the model has no nn.Linear to factor")
        return 1, max(min(m.in_features, m.out_features) for _, m in found)

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if size is None or int(size) < 1:
            raise PluginError(f"{self.name}: rank must be an integer >= 1, got {size!r}")
        new = copy.deepcopy(model)  # never change the caller's model
        for name, linear in linears(new):
            r = min(int(size), linear.in_features, linear.out_features)
            if r * (linear.in_features + linear.out_features) < linear.in_features * linear.out_features:
                replace(new, name, factor(linear, r))
        return new


@hookimpl
def register_methods(register) -> None:
    register(${cls}Method)
'''

TRAIN = '''"""$name: a low-rank parameterisation trained from scratch (the scaffold's train example).

Every nn.Linear but the last (the classifier) becomes U(V x) with V (rank, d_in) and U (d_out,
rank), freshly initialised like nn.Linear: rank (d_in + d_out) + bias parameters per layer.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Knob, Method, PluginError
from lowdim_bench.hookspecs import hookimpl


def hidden_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return found[:-1]  # the last Linear is the classifier: kept dense


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


class ${cls}Method(Method):
    name = "$name"
    kind = "train"
    knob = Knob("rank", 1, None)
    targets = ("Linear",)
    description = "Each hidden Linear as U V of rank r, trained from scratch; the classifier dense."

    def knob_range(self, model: nn.Module) -> tuple[float, float]:
        found = hidden_linears(model)
        if not found:
            raise PluginError(f"{self.name}: the model has no hidden nn.Linear")
        return 1, max(min(m.in_features, m.out_features) for _, m in found)

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        if size is None or int(size) < 1:
            raise PluginError(f"{self.name}: rank must be an integer >= 1, got {size!r}")
        new = copy.deepcopy(model)  # never change the caller's model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ctx.seed))  # the init depends on ctx.seed only
            for name, lin in hidden_linears(new):
                r = int(size)
                low = nn.Sequential(nn.Linear(lin.in_features, r, bias=False),
                                    nn.Linear(r, lin.out_features, bias=lin.bias is not None))
                replace(new, name, low.to(lin.weight.dtype))
        return new


@hookimpl
def register_methods(register) -> None:
    register(${cls}Method)
'''

HEAD = '''"""$name: a cosine classifier head (the scaffold's head example; make it your method).

The last nn.Linear is replaced by logits = s cos(x, w_c): rows w_c start as the old head's
weights, the scale s (init 10) is learnt; the body is frozen. Trainable: the head's weight + 1.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext, Method, PluginError
from lowdim_bench.hookspecs import hookimpl


class CosineHead(nn.Module):
    def __init__(self, old: nn.Linear, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(old.weight.detach().clone())
        self.scale = nn.Parameter(torch.tensor(float(scale), dtype=old.weight.dtype, device=old.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


class ${cls}Method(Method):
    name = "$name"
    kind = "head"
    defaults = {"scale": 10.0}
    targets = ("Linear",)
    description = "Cosine classifier: the last Linear as s cos(x, w_c), body frozen."

    def apply(self, model: nn.Module, size: float | None, ctx: ApplyContext) -> nn.Module:
        new = copy.deepcopy(model)  # never change the caller's model
        new.requires_grad_(False)
        found = [(n, m) for n, m in new.named_modules() if isinstance(m, nn.Linear)]
        if not found:
            raise PluginError(f"{self.name}: the model has no nn.Linear classifier")
        name, old = found[-1]
        parent, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent) if parent else new, child, CosineHead(old, float(self.hparams["scale"])))
        return new


@hookimpl
def register_methods(register) -> None:
    register(${cls}Method)
'''

TASK = '''"""$name: Gaussian blobs (the scaffold's task example; make it your workload).

`classes` blobs in `dim` dimensions, drawn once from a constant seed (the run's seed only
changes the model's init and batch order); "source" uses other centres than "target", so adapt
methods move between them. An MLP dim -> hidden -> classes; quality: test accuracy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import PluginError, Quality, Recipe, Task
from lowdim_bench.hookspecs import hookimpl

DATA_SEED = {"target": 0, "source": 1}


class ${cls}Task(Task):
    name = "$name"
    quality = Quality(name="accuracy", unit="fraction", higher_is_better=True)
    defaults = {"n": 1200, "dim": 16, "classes": 4, "hidden": 32, "steps": 200, "lr": 1e-2}
    description = "Gaussian blobs, an MLP; source and target stages differ by their centres."

    def make_model(self, seed: int) -> nn.Module:
        o = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(o["dim"], o["hidden"]), nn.ReLU(), nn.Linear(o["hidden"], o["classes"]))

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
        if stage not in DATA_SEED:
            raise PluginError(f"task {self.name!r}: unknown stage {stage!r}; known: {sorted(DATA_SEED)}")
        o = self.options
        g = torch.Generator().manual_seed(DATA_SEED[stage])
        y = torch.arange(o["n"]) % o["classes"]
        x = torch.randn(o["classes"], o["dim"], generator=g)[y] * 1.5 + torch.randn(o["n"], o["dim"], generator=g)
        order = torch.randperm(o["n"], generator=g)
        x, y = x[order], y[order]
        a, b = int(0.6 * o["n"]), int(0.8 * o["n"])
        return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}

    def recipe(self, purpose: str) -> Recipe:
        return Recipe(steps=int(self.options["steps"]), batch_size=64, lr=float(self.options["lr"]))

    def batches(self, split: Any, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        x, y = split
        while True:
            idx = torch.randint(len(y), (batch_size,), generator=generator)
            yield x[idx], y[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, split: Any) -> float:
        x, y = split
        with torch.no_grad():
            return float((model(x).argmax(-1) == y).float().mean())

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(batch_size, self.options["dim"], generator=g).to(device),)

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, self.options["dim"], generator=g)
        return x.to(device), torch.randint(self.options["classes"], (batch_size,), generator=g).to(device)


@hookimpl
def register_tasks(register) -> None:
    register(${cls}Task)
'''

METRIC = '''"""$name: mean effective rank of the deployed model's nn.Linear weights (the scaffold's metric example).

Effective rank (Roy and Vetterli 2007): exp of the entropy of the normalised singular values.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowdim_bench.api import Measurement, MeasureContext, Metric
from lowdim_bench.hookspecs import hookimpl


def effective_rank(weight: torch.Tensor) -> float:
    s = torch.linalg.svdvals(weight.detach().double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class ${cls}Metric(Metric):
    name = "$name"
    description = "Mean effective rank of the deployed model's nn.Linear weights."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        ranks = [effective_rank(m.weight) for m in ctx.inference_model.modules() if isinstance(m, nn.Linear)]
        if not ranks:
            return []
        return [Measurement("effective_rank_mean", sum(ranks) / len(ranks), "rank")]


@hookimpl
def register_metrics(register) -> None:
    register(${cls}Metric)
'''

SUITE_METHOD = '''# $name beside its reference on digits-mlp: `lowdim-bench run $name-smoke`.
name = "$name-smoke"
version = "1"
description = "$name and its reference on digits-mlp, one budget, one seed."
budgets = [0.1]
seeds = [0]
measure = ["params", "flops"]
timeout_s = 300

tasks = ["digits-mlp"]

[methods.$name]
[methods.dense]
kinds = ["$dense_kind"]
'''

SUITE_TASK = '''# The dense reference and LoRA on $name: `lowdim-bench run $name-smoke`.
name = "$name-smoke"
version = "1"
description = "dense and LoRA on $name, one budget, one seed."
budgets = [0.2]
seeds = [0]
measure = ["params", "flops"]
timeout_s = 300

tasks = ["$name"]

[methods.dense]
kinds = ["adapt"]
[methods.lora]
'''

SUITE_METRIC = '''# The smoke methods measured with $name: `lowdim-bench run $name-smoke`.
name = "$name-smoke"
version = "1"
description = "dense and LoRA on digits-mlp, measured with $name."
budgets = [0.2]
seeds = [0]
measure = ["params", "$name"]
timeout_s = 300

tasks = ["digits-mlp"]

[methods.dense]
kinds = ["adapt"]
[methods.lora]
'''

TEST_METHOD = '''"""The conformance kit on $name (one test per check), and that the entry point registers it."""
import pytest

from lowdim_bench.registry import Registry
from lowdim_bench.testing import METHOD_CHECKS

from $module.plugin import ${cls}Method


@pytest.mark.parametrize("check", list(METHOD_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.method(${cls}Method, checks=[check])


def test_registered_through_the_entry_point():
    registry = Registry.load()
    assert registry.method("$name").plugin.dist == "$dist"
    assert any(f.stem == "$name-smoke" for f in registry.suite_files())
'''

TEST_TASK = '''"""The conformance kit on $name (one test per check), and that the entry point registers it."""
import pytest

from lowdim_bench.registry import Registry
from lowdim_bench.testing import TASK_CHECKS

from $module.plugin import ${cls}Task


@pytest.mark.parametrize("check", list(TASK_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.task(${cls}Task(), checks=[check])


def test_lora_runs_on_it(lowdim_kit):
    lowdim_kit.method(Registry.load().method("lora").cls, ${cls}Task(), checks=["smoke_run", "identity_at_init"])


def test_registered_through_the_entry_point():
    registry = Registry.load()
    assert registry.task("$name").plugin.dist == "$dist"
'''

TEST_METRIC = '''"""The conformance kit on $name, and that the entry point registers it."""
import torch

from lowdim_bench.registry import Registry

from $module.plugin import effective_rank, ${cls}Metric


def test_conforms(lowdim_kit):
    lowdim_kit.metric(${cls}Metric)


def test_effective_rank_of_known_spectra():
    assert abs(effective_rank(torch.eye(5)) - 5.0) < 1e-9
    assert abs(effective_rank(torch.outer(torch.ones(4), torch.arange(1.0, 4.0))) - 1.0) < 1e-6


def test_registered_through_the_entry_point():
    assert Registry.load().metric("$name").plugin.dist == "$dist"
'''
