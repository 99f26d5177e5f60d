"""Template of a task: Gaussian blobs and an MLP with dropout. When the package also holds a merge
method, the FAMILY_* pieces fill the $family_* placeholders, making the task a family."""
from __future__ import annotations

CODE = '''"""$task_name: Gaussian blobs (the scaffold's task example; make it your workload).

`classes` blobs in `dim` dimensions, drawn once from a constant seed (the run's seed only
changes the model's init and batch order); "source" uses other centres than "target", so adapt
methods move between them.$family_doc An MLP dim -> hidden -> classes with dropout (the harness
seeds the global RNG before building and training, so dropout is reproducible); quality: test
accuracy.
"""
from __future__ import annotations
$family_import
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import Param, PluginError, Quality, Recipe, Task

DATA_SEED = {"target": 0, "source": 1}
$family_const

class ${cls}Task(Task):
    name = "$task_name"
    quality = Quality(name="accuracy", unit="fraction", higher_is_better=True)
    params = {
        "n": Param(1200, int, low=100, help="samples per stage (60% train, 20% val, 20% test)"),
        "dim": Param(32, int, low=1, help="input dimension"),
        "classes": Param(4, int, low=2, help="number of blobs (classes)"),
        "hidden": Param(64, int, low=1, help="hidden width of the MLP"),
        "dropout": Param(0.1, float, low=0.0, high=0.9, help="dropout after the hidden layer"),
        "steps": Param(200, int, low=0, help="training steps of every recipe"),
        "lr": Param(1e-2, float, low=1e-6, high=1.0, help="learning rate of every recipe"),
    }
    description = "Gaussian blobs, an MLP with dropout; source and target stages differ by their centres."

    def make_model(self, seed: int) -> nn.Module:
        o = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(o["dim"], o["hidden"]), nn.ReLU(), nn.Dropout(o["dropout"]),
                                 nn.Linear(o["hidden"], o["classes"]))

    def splits(self, stage: str, seed: int) -> dict[str, Any]:
$family_stage        if stage not in DATA_SEED:
            raise PluginError(f"task {self.name!r}: unknown stage {stage!r}; known: {sorted(DATA_SEED)}")
        o = self.options
        g = torch.Generator().manual_seed(DATA_SEED[stage])
        y = torch.arange(o["n"]) % o["classes"]
        x = torch.randn(o["classes"], o["dim"], generator=g)[y] * 1.5 + torch.randn(o["n"], o["dim"], generator=g)
$family_relabel        order = torch.randperm(o["n"], generator=g)
        x, y = x[order], y[order]
        a, b = int(0.6 * o["n"]), int(0.8 * o["n"])
        return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}
$family
    def recipe(self, purpose: str) -> Recipe:
        return Recipe(steps=self.options["steps"], batch_size=64, lr=self.options["lr"])

    def batches(self, split: Any, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        x, y = split
        while True:
            idx = torch.randint(len(y), (batch_size,), generator=generator)
            yield x[idx], y[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, split: Any) -> float:
        logits, labels = self.predictions(model, split)
        return float((logits.argmax(-1) == labels).float().mean())

    def predictions(self, model: nn.Module, split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = split
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return model(x), y
        finally:
            model.train(was_training)

    def example_inputs(self, batch_size: int, device: torch.device) -> tuple:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(batch_size, self.options["dim"], generator=g).to(device),)

    def example_batch(self, batch_size: int, device: torch.device) -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, self.options["dim"], generator=g)
        return x.to(device), torch.randint(self.options["classes"], (batch_size,), generator=g).to(device)
'''

FAMILY_DOC = ('\nA family of members "a", "b", "c" (for merge cells) relabels the target blobs, each by its'
              "\nown shift of the labels.")
FAMILY_IMPORT = "\nimport copy"
FAMILY_CONST = 'MEMBERS = {"a": 1, "b": 2, "c": 3}  # a family member\'s labels: the target\'s, shifted by this\n'
FAMILY_STAGE = '''        member = stage[len("member:"):] if stage.startswith("member:") else None
        if member in MEMBERS:  # a family member: the target blobs, relabelled
            stage = "target"
'''
FAMILY_RELABEL = '''        if member in MEMBERS:
            y = (y + MEMBERS[member]) % o["classes"]
'''
FAMILY = '''
    def members(self) -> list[str]:
        """The family merge cells merge: one member per relabelling of the target blobs, each
        fine-tuned by the harness from the source base on its stage "member:<name>"."""
        return list(MEMBERS)

    def member_view(self, merged: nn.Module, member: str, member_model: nn.Module) -> nn.Module:
        """The merged body with the member's own head (each member has its own labels)."""
        view = copy.deepcopy(merged)
        view[-1] = copy.deepcopy(member_model[-1])
        return view
'''
NO_FAMILY = {"family_doc": "", "family_import": "", "family_const": "", "family_stage": "", "family_relabel": "",
             "family": ""}
WITH_FAMILY = {"family_doc": FAMILY_DOC, "family_import": FAMILY_IMPORT, "family_const": FAMILY_CONST,
               "family_stage": FAMILY_STAGE, "family_relabel": FAMILY_RELABEL, "family": FAMILY}

TEST = '''"""The conformance kit on $task_name (one test per check), a built-in method on it, and its options."""
import pytest

from lowdim_bench.api import PluginError
from lowdim_bench.testing import TASK_CHECKS

from $module.task import ${cls}Task


@pytest.mark.parametrize("check", list(TASK_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.task(${cls}Task(), checks=[check])


def test_lora_runs_on_it(lowdim_kit):
    lowdim_kit.method("lora", ${cls}Task(), checks=["smoke_run", "identity_at_init"])


def test_bad_options_are_refused_with_their_name():
    with pytest.raises(PluginError, match="dropout"):
        ${cls}Task(dropout=1.5)
    with pytest.raises(PluginError, match="hidden"):
        ${cls}Task(hidden=2.5)
'''
