"""Template of an analysis: prediction agreement of each saved model with the reference's."""
from __future__ import annotations

CODE = '''"""$analysis_name: how often each method's model predicts what the reference's does (the
scaffold's analysis example; make it your analysis).

It runs after a run's cells on their saved models (`needs = ("model",)`: the suite saves every
cell's trained model for it). For each saved model of a method entry and the reference entry's
(the suite's `reference`, dense by default) of the same task, kind and seed, both predict one
batch of `batch` test samples (the task's own batches and model inputs, so any task works): the
share of samples whose argmax over the last output dimension agrees. A row below
`min_agreement` is flagged. The suite table it reads:

    [$table]
    batch = 256           # test samples compared
    min_agreement = 0.0   # flag rows below this share
"""
from __future__ import annotations

from typing import Any

import polars as pl
import torch

from lowdim_bench.api import Analysis, AnalysisContext, AnalysisRecord, AnalysisResult, ConfigError, SuiteView

DEFAULTS = {"batch": 256, "min_agreement": 0.0}


def predicted(ctx: AnalysisContext, cell_key: str, batch: int) -> torch.Tensor:
    """Argmax predictions of a saved model on a fixed batch of its cell's test split."""
    task, model = ctx.artefacts.task(cell_key), ctx.artefacts.load_model(cell_key)
    device = next(model.parameters()).device
    sample = next(task.batches(ctx.artefacts.splits(cell_key)["test"], batch, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        out = task.model_inputs(task.to_device(sample, device)).call(model.eval())
    return (out[0] if isinstance(out, (tuple, list)) else out).argmax(-1).cpu()


class ${cls}Analysis(Analysis):
    name = "$analysis_name"
    table = "$table"
    needs = ("model",)
    description = "Prediction agreement of each saved model with the reference entry's (same task, kind, seed)."

    def validate(self, raw: Any, suite: SuiteView) -> dict[str, Any]:
        """Runs before any cell: a bad table fails the suite with its file and line."""
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a table [{self.table}], got {raw!r}")
        unknown = sorted(set(raw) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown field; expected one of {sorted(DEFAULTS)}", key=unknown[0])
        out = {**DEFAULTS, **raw}
        if type(out["batch"]) is not int or out["batch"] < 1:
            raise ConfigError(f"expected an integer >= 1, got {out['batch']!r}", key="batch")
        if type(out["min_agreement"]) not in (int, float) or not 0 <= out["min_agreement"] <= 1:
            raise ConfigError(f"expected a number in [0, 1], got {out['min_agreement']!r}", key="min_agreement")
        if suite.reference is None:
            raise ConfigError("the suite has no reference entry to compare with; set `reference = \\"...\\"`")
        return out

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        saved = ctx.artefacts.list("model")
        refs = {(a.task, a.kind, a.seed): a for a in saved if a.method == ctx.suite.reference}
        rows, records = [], []
        for a in saved:
            ref = refs.get((a.task, a.kind, a.seed))
            if a.method == ctx.suite.reference or ref is None:
                continue
            mine, theirs = predicted(ctx, a.cell_key, ctx.options["batch"]), predicted(ctx, ref.cell_key,
                                                                                      ctx.options["batch"])
            share = float((mine == theirs).float().mean())
            rows.append({"task": a.task, "kind": a.kind, "method": a.method, "size": a.size, "seed": a.seed,
                         "agreement": share, "flagged": share < ctx.options["min_agreement"]})
            records.append(AnalysisRecord("agreement_with_reference", share, "fraction", task=a.task, method=a.method,
                                          kind=a.kind, seed=a.seed, phase=a.size, higher_is_better=True))
        columns = {"task": pl.Utf8, "kind": pl.Utf8, "method": pl.Utf8, "size": pl.Utf8, "seed": pl.Int64,
                   "agreement": pl.Float64, "flagged": pl.Boolean}
        table = pl.DataFrame(rows, schema=columns).sort(["task", "kind", "method", "size", "seed"])
        mean = table.group_by(["task", "kind", "method", "size"]).agg(pl.col("agreement").mean()).sort(
            ["task", "kind", "method", "size"])
        lines = [f"- {r['task']} [{r['kind']}] {r['method']} @ {r['size']}: {r['agreement']:.3f}"
                 for r in mean.iter_rows(named=True)] or ["- no saved model had a reference to compare with"]
        md = f"## Agreement with the reference ({ctx.suite.reference})\\n\\n" + "\\n".join(lines) + "\\n"
        return AnalysisResult(table=table, markdown=md, records=records)
'''

TEST = '''"""The conformance kit on $analysis_name: its declaration, its suite table, a run on saved models."""
import pytest

from lowdim_bench.api import ConfigError, SuiteView
from lowdim_bench.testing import ANALYSIS_CHECKS

from $module.analysis import ${cls}Analysis
$task_import
TABLE = {"batch": 64, "min_agreement": 0.5}
BAD = [42, {"batch": 0}, {"batch": 2.5}, {"min_agreement": 2}, {"typo": 1}]


@pytest.mark.parametrize("check", list(ANALYSIS_CHECKS))
def test_conforms(lowdim_kit, check):
    lowdim_kit.analysis(${cls}Analysis, TABLE, bad_tables=BAD, task=$task, checks=[check])


def test_a_bad_field_is_named():
    view = SuiteView(tasks=("t",), entries={"dense": "dense"}, reference="dense")
    with pytest.raises(ConfigError) as info:
        ${cls}Analysis().validate({"batch": 0}, view)
    assert info.value.key == "batch"
    with pytest.raises(ConfigError, match="reference"):
        ${cls}Analysis().validate({}, SuiteView(tasks=("t",), entries={"x": "x"}, reference=None))
'''
