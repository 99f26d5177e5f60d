"""The representations analysis on hand-made artefacts (the harness's wiring is tested elsewhere)."""
import copy
from pathlib import Path

import polars as pl
import pytest
import torch

from lowdim_bench.api import AnalysisContext, ArtefactInfo, ConfigError, SuiteView
from lowdim_bench_builtin.analyses.representations import RepresentationsAnalysis
from lowdim_bench_builtin.methods.lora import LoraMethod
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
from lowdim_bench_builtin.tasks.stdlib_lm import StdlibLM
from method_helpers import ctx

SUITE = SuiteView(tasks=("digits-mlp", "stdlib-lm"), entries={"dense": "dense", "lora": "lora"}, reference="dense")


class FakeArtefacts:
    """Models in memory, keyed like the harness's cells."""

    def __init__(self, task, cells):
        self._task, self.cells = task, cells  # cell_key -> (ArtefactInfo, model)

    def list(self, what="model"):
        return [info for info, _ in self.cells.values()]

    def load_model(self, key):
        return copy.deepcopy(self.cells[key][1])

    def task(self, key):
        return self._task

    def splits(self, key):
        return self._task.splits("target", self.cells[key][0].seed)


def info(key, task, method, seed):
    return ArtefactInfo(cell_key=key, task=task, method=method, kind="adapt", size="full", seed=seed, what="model",
                        path=Path("/nonexistent"), bytes=0)


def permuted_hidden(model):
    """The same function with the first hidden layer's units permuted."""
    twin = copy.deepcopy(model)
    perm = torch.randperm(twin.body[0].out_features, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        twin.body[0].weight.copy_(model.body[0].weight[perm])
        twin.body[0].bias.copy_(model.body[0].bias[perm])
        twin.body[2].weight.copy_(model.body[2].weight[:, perm])
    return twin


def run(artefacts, options=None):
    analysis = RepresentationsAnalysis()
    opts = analysis.validate(options or {"probe": 64}, SUITE)
    return analysis.run(AnalysisContext(run_dir=Path("."), records=pl.DataFrame(), summary=pl.DataFrame(),
                                        options=opts, suite=SUITE, artefacts=artefacts))


@pytest.fixture(scope="module")
def digits_result():
    task = DigitsTask(hidden=32)
    m0, m1 = task.make_model(0), task.make_model(1)
    lora0 = LoraMethod().apply(m0, 2, ctx())
    cells = {"k1": (info("k1", "digits-mlp", "dense", 0), m0),
             "k2": (info("k2", "digits-mlp", "dense", 1), permuted_hidden(m0)),
             "k3": (info("k3", "digits-mlp", "lora", 0), lora0),
             "k4": (info("k4", "digits-mlp", "lora", 1), m1)}
    return run(FakeArtefacts(task, cells), {"probe": 64, "sparse_prediction": True})


def test_points_are_layer_inputs_without_the_data(digits_result):
    t = digits_result.table
    assert sorted(set(t["point"])) == ["body.2.in", "head.in"]  # body.0.in is the data itself: dropped
    assert len(t) == 6 * 2 and set(t["rows"]) == {64}


def test_identical_and_permuted_models(digits_result):
    t = digits_result.table
    same = t.filter((pl.col("a") == "dense@full#s0") & (pl.col("b") == "lora@full#s0"))  # LoRA at init = base
    assert same["linear_cka"].to_list() == pytest.approx([1.0, 1.0])
    perm = t.filter((pl.col("a") == "dense@full#s0") & (pl.col("b") == "dense@full#s1")).sort("point")
    hidden1 = perm.row(0, named=True)  # body.2.in: the permuted layer's output
    assert hidden1["linear_cka"] == pytest.approx(1.0) and hidden1["svcca"] == pytest.approx(1.0, abs=1e-6)
    assert hidden1["match_corr"] == pytest.approx(1.0, abs=1e-6)  # the matching undoes the permutation
    assert hidden1["sparse_r2"] > 0.9 and hidden1["sparse_connections"] <= 2  # one unit predicts each
    other = t.filter((pl.col("a") == "dense@full#s0") & (pl.col("b") == "lora@full#s1"))
    assert all(v < 0.99 for v in other["linear_cka"])


def test_records_average_seed_pairs_within_and_same_seed_across(digits_result):
    recs = {(r.metric, r.phase): r for r in digits_result.records}
    within = recs[("linear_cka.body.2.in", "dense@full | dense@full")]
    assert within.value == pytest.approx(1.0) and within.task == "digits-mlp"
    across = recs[("linear_cka.body.2.in", "dense@full | lora@full")]
    t = digits_result.table.filter((pl.col("point") == "body.2.in") & (pl.col("a_method") != pl.col("b_method"))
                                   & (pl.col("a_seed") == pl.col("b_seed")))
    assert across.value == pytest.approx(t["linear_cka"].mean())
    assert {r.metric.split(".")[0] for r in digits_result.records} == {
        "linear_cka", "debiased_cka", "svcca", "match_corr", "semi_corr", "sparse_r2", "sparse_connections"}
    assert "### digits-mlp" in digits_result.markdown and "dense@full ~ dense@full" in digits_result.markdown


def test_lm_points_are_deduplicated_and_tokens_are_rows():
    task = StdlibLM(d_model=32, n_layers=1, n_heads=2, d_ff=64, context=16, eval_windows=8, max_corpus_bytes=50_000)
    cells = {f"k{s}": (info(f"k{s}", "stdlib-lm", "dense", s), task.make_model(s)) for s in (0, 1)}
    res = run(FakeArtefacts(task, cells), {"probe": 8, "max_rows": 100})
    points = list(res.table["point"])
    # wq, wk, wv read one tensor and gate, up another: each kept once; the embedding is no Linear
    assert points == ["blocks.0.attn.wq.in", "blocks.0.attn.wo.in", "blocks.0.mlp.gate.in",
                      "blocks.0.mlp.down.in", "head.in"]
    assert set(res.table["rows"]) == {100}  # 8 windows x 16 tokens, 100 rows kept evenly


def test_validate_names_bad_fields():
    a = RepresentationsAnalysis()
    with pytest.raises(ConfigError) as e:
        a.validate({"probes": 3}, SUITE)
    assert e.value.key == "probes"
    with pytest.raises(ConfigError, match="integer >= 8"):
        a.validate({"probe": 2}, SUITE)
    with pytest.raises(ConfigError, match="tasks must list"):
        a.validate({"tasks": ["nope"]}, SUITE)
    assert a.validate(None, SUITE)["probe"] == 256


def test_fewer_than_two_models_is_said():
    task = DigitsTask(hidden=32)
    res = run(FakeArtefacts(task, {"k": (info("k", "digits-mlp", "dense", 0), task.make_model(0))}))
    assert res.table is None and "nothing to compare" in res.markdown
