"""A cell: one (task, method, kind, budget or knob, seed, device) point of a suite.

The cell is the unit of execution, caching and resume. Its key hashes its full configuration
plus the code versions of the plugins it uses, so changed code never reuses old results.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Cell:
    suite: str
    suite_version: str
    task: str
    task_options: dict[str, Any]
    method: str
    hparams: dict[str, Any]
    kind: str
    budget: float | None
    knob: float | None
    seed: int
    device: str
    recipe: dict[str, Any] = field(default_factory=dict)
    lr_grid: list[float] = field(default_factory=list)
    measure: list[str] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0
    versions: dict[str, str] = field(default_factory=dict)
    alias: str = ""  # the suite's name for this method entry (a variant), when it differs
    reference: bool = False  # the suite's reference entry (ratios and baselines are taken against it)
    save: list[str] = field(default_factory=list)  # artefacts to keep after training: "model"
    task_alias: str = ""  # the suite's name for the task when it differs (one task at two widths)

    @property
    def shown_name(self) -> str:
        return self.alias or self.method

    @property
    def shown_task(self) -> str:
        return self.task_alias or self.task

    def config(self) -> dict[str, Any]:
        """Everything that determines the cell's result (timeout is how long we wait, not what we get)."""
        d = asdict(self)
        d.pop("timeout_s")
        return d

    @property
    def key(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def size_label(self) -> str:
        if self.knob is not None:
            return f"knob={self.knob:g}"
        if self.budget is not None:
            return f"budget={self.budget:g}"
        return "full"

    @property
    def label(self) -> str:
        return f"{self.shown_task}/{self.shown_name}[{self.kind}] {self.size_label} seed={self.seed}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


PSEUDO_PREFIXES = ("interleave:", "analysis:")  # keys of passes over a run, stored like cells


def is_cell_key(key: str) -> bool:
    """A real cell's key (not the interleave pass or an analysis stored beside the cells)."""
    return not key.startswith(PSEUDO_PREFIXES)
