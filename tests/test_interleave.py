"""Interleaved latency: which cells are grouped, that a rebuilt deployed model has the structure
the cell measured (seeded sparse supports included), and the post-phase end to end."""
from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from conftest import write_suite
from lowdim_bench.api import ApplyContext
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run import interleave
from lowdim_bench.core.cells import Cell
from lowdim_bench.run.interleave import PHASE, Reached, deployed_model, groups, reached_from_records, time_group

CPU = torch.device("cpu")
SMALL_DIGITS = {"hidden": 16, "depth": 2, "steps": 5, "finetune_steps": 5}
PROTOCOL = {"batch_sizes": [1, 4], "warmup": 1, "repeats": 6, "max_seconds": 0.0, "interleave": True}


def cell(method: str, kind: str, knob: float | None = None, task: str = "digits-mlp", seed: int = 0,
         measure: tuple = ("latency",), protocol: dict | None = None, **hparams) -> Cell:
    return Cell(suite="t", suite_version="1", task=task, task_options=SMALL_DIGITS if task == "digits-mlp" else {},
                method=method, hparams=hparams, kind=kind, budget=None, knob=knob, seed=seed, device="cpu",
                measure=list(measure), protocol=protocol or dict(PROTOCOL), reference=method == "dense")


def test_groups_take_ok_latency_cells_with_interleave_on_and_two_or_more() -> None:
    a, b = cell("dense", "adapt"), cell("lora", "adapt", 2)
    off = cell("lora", "adapt", 4, protocol={**PROTOCOL, "interleave": False})
    no_latency = cell("lora", "adapt", 8, measure=("params",))
    failed = cell("lora", "adapt", 3)
    lonely = cell("fake-head", "adapt", task="tiny")
    ok = {c.key: Reached(c.knob, 0.5) for c in (a, b, off, no_latency, lonely)}
    assert groups([a, b, off, no_latency, failed, lonely], ok) == {"digits-mlp": [a, b]}


def test_reached_is_read_from_ok_records_only() -> None:
    recs = [{"cell_key": "k1", "status": "ok", "knob": None, "budget_reached": None, "metric": "quality_before"},
            {"cell_key": "k1", "status": "ok", "knob": 3.0, "budget_reached": 0.1, "metric": "quality"},
            {"cell_key": "k1", "status": "ok", "knob": 3.0, "budget_reached": 0.1, "metric": "params_total"},
            {"cell_key": "k2", "status": "failed", "knob": None, "metric": "error"},
            {"cell_key": "interleave:x", "status": "ok", "knob": 1.0, "metric": "latency_p50"}]
    assert reached_from_records(recs) == {"k1": Reached(3.0, 0.1)}


def test_reference_is_the_dense_cell_of_the_same_seed_and_kind() -> None:
    d0, d1 = cell("dense", "adapt", seed=0), cell("dense", "adapt", seed=1)
    lora1 = cell("lora", "adapt", 2, seed=1)
    assert interleave.reference_key([d0, d1, lora1], lora1) == d1.key
    assert interleave.reference_key([d0, lora1], lora1) == d0.key
    assert interleave.reference_key([lora1, cell("lora", "adapt", 4)], lora1) is None


@pytest.mark.slow  # trains the (small) source-stage base once
def test_rebuilt_lora_has_the_rank_and_counts_of_a_fresh_apply() -> None:
    reg = Registry.load()
    c = cell("lora", "adapt", 3)
    model, base = deployed_model(c, Reached(3, 0.2), reg, CPU)
    ranks = {m.rank for m in model.modules() if hasattr(m, "lora_A")}
    assert ranks == {3} and base["knob"] == 3 and base["budget_reached"] == 0.2 and base["method"] == "lora"
    task = reg.task("digits-mlp").cls(**SMALL_DIGITS)
    fresh = reg.method("lora").cls().apply(task.make_model(0), 3, ApplyContext(seed=0, device=CPU, task=task))
    assert count_params(model) == count_params(fresh)
    assert not model.training


def test_rebuilt_sltrain_has_the_seeded_support_of_the_cell() -> None:
    reg = Registry.load()
    c = cell("sltrain", "train", 4)
    model, _ = deployed_model(c, Reached(4, None), reg, CPU)
    task = reg.task("digits-mlp").cls(**SMALL_DIGITS)
    fresh = reg.method("sltrain").cls().apply(task.make_model(0), 4, ApplyContext(seed=0, device=CPU, task=task))
    got = [b for n, b in model.named_buffers() if n.endswith("indices")]
    want = [b for n, b in fresh.named_buffers() if n.endswith("indices")]
    assert len(got) == 2 and all(torch.equal(g, w) for g, w in zip(got, want))
    other_seed, _ = deployed_model(cell("sltrain", "train", 4, seed=1), Reached(4, None), reg, CPU)
    assert not torch.equal(next(b for n, b in other_seed.named_buffers() if n.endswith("indices")), got[0])


def test_time_group_records_every_cell_and_batch_size_with_ratios_to_dense() -> None:
    reg = Registry.load()
    dense, sl = cell("dense", "train"), cell("sltrain", "train", 2)  # train cells: no base to pretrain
    recs = time_group([dense, sl], {dense.key: Reached(None, 1.0), sl.key: Reached(2, 0.05)}, reg, CPU, "r1")
    assert {r["phase"] for r in recs} == {PHASE}
    by = {(r["method"], r["metric"], r["batch_size"]): r for r in recs}
    for method in ("dense", "sltrain"):
        for bs in (1, 4):
            assert by[(method, "latency_n", bs)]["value"] == 6
            assert 0 < by[(method, "latency_p50", bs)]["value"] <= by[(method, "latency_p90", bs)]["value"]
    assert by[("dense", "latency_ratio", 1)]["value"] == 1.0
    ratio = by[("sltrain", "latency_ratio", 4)]["value"]
    assert ratio == pytest.approx(by[("sltrain", "latency_p50", 4)]["value"] / by[("dense", "latency_p50", 4)]["value"])
    assert by[("sltrain", "latency_p50", 1)]["cell_key"] == sl.key and by[("sltrain", "latency_p50", 1)]["run_id"] == "r1"
    assert json.loads(by[("sltrain", "latency_p50", 1)]["config"])["interleave"]["cells"] == [dense.key, sl.key]


SUITE = """
name = "il"
seeds = [0]
measure = ["latency"]
timeout_s = 120
tasks = ["tiny"]
[protocol]
batch_sizes = [4]
repeats = 5
warmup = 1
max_seconds = 0.2
train_batch_size = 8
memory_batch_size = 8
roofline = false
[methods.fake-head]
[methods.fake-width]
knobs = [4, 8]
"""


@pytest.mark.slow
def test_post_phase_end_to_end_and_a_rerun_replaces_instead_of_adding(tmp_path, fake_plugins) -> None:
    from lowdim_bench.core.store import RunStore
    from lowdim_bench.plan import expand
    from lowdim_bench.run.runner import run_cells
    from lowdim_bench.suite import load_suite

    reg = Registry.load()
    suite = load_suite(write_suite(tmp_path / "s.toml", SUITE), reg)
    cells = expand(suite, reg)
    seen = []
    res = run_cells(cells, {"name": suite.name, "version": suite.version}, reg, out_dir=tmp_path / "reports",
                    listeners=[seen.append], jobs=2)
    assert (res.ok, res.failed) == (3, 0)  # the interleave pseudo-cell is not a cell
    df = pl.read_parquet(res.run_dir / "records.parquet")
    il = df.filter(pl.col("phase") == PHASE)
    p50 = il.filter(pl.col("metric") == "latency_p50")
    assert sorted(p50["method"].to_list()) == ["fake-head", "fake-width", "fake-width"]
    assert sorted(p50["knob"].drop_nulls().to_list()) == [4.0, 8.0]
    assert set(il.filter(pl.col("metric") == "latency_n")["value"].to_list()) == {5.0}
    assert any(getattr(e, "stage", "") == "interleaved latency" for e in seen)
    store = RunStore.open(res.run_dir)
    first = store.finished()["interleave:tiny"]["attempt"]
    # nothing of the task ran again: the figures stay; a cell of it ran again: the task is retimed
    assert interleave.post_phase(store, cells, set(), store.run_id, 1, "cpu") == 0
    assert interleave.post_phase(store, cells, {cells[0].key}, store.run_id, 1, "cpu") == 1
    assert store.finished()["interleave:tiny"]["attempt"] != first
    recs = [r for r in store.records() if r.get("phase") == PHASE and r["metric"] == "latency_p50"]
    assert len(recs) == 3


@pytest.mark.slow
def test_a_failing_group_becomes_a_failed_reason(fake_plugins) -> None:
    bad = cell("fake-width", "compress", 4, task="tiny")
    bad.method = "no-such-method"
    status, reason = interleave.run_group([bad], {bad.key: Reached(4, None)}, "r", 1, "cpu", 60)
    assert status == "failed" and "no-such-method" in reason and "Traceback" in reason
    rec = interleave.failure_record("tiny", "r", reason)
    assert rec["status"] == "failed" and rec["method"] == "(interleave)" and rec["metric"] == "error"


def test_protocol_switches_take_booleans_only(tmp_path) -> None:
    from lowdim_bench.suite import SuiteError, load_suite

    body = 'name = "b"\ntasks = ["digits-mlp"]\nmethods = ["dense"]\n[protocol]\ninterleave = {}\n'
    reg = Registry.load()
    ok = load_suite(write_suite(tmp_path / "ok.toml", body.format("false")), reg)
    assert ok.protocol["interleave"] is False and ok.protocol["roofline"] is True and ok.protocol["compile"] is False
    with pytest.raises(SuiteError, match=r"ok\.toml|bad\.toml") as e:
        load_suite(write_suite(tmp_path / "bad.toml", body.format("1")), reg)
    assert "[protocol] field 'interleave': Input should be a valid boolean, got 1" in str(e.value)


def test_interleave_seeds_keeps_the_first_seeds_of_each_task() -> None:
    """A deployed model's structure does not depend on its seed: `interleave_seeds = 1` times one."""
    one = {**PROTOCOL, "interleave_seeds": 1}
    cells = [cell(m, "adapt", k, seed=s, protocol=one) for s in (2, 0, 1) for m, k in (("dense", None), ("lora", 2))]
    ok = {c.key: Reached(c.knob, 0.5) for c in cells}
    assert [(c.method, c.seed) for c in groups(cells, ok)["digits-mlp"]] == [("dense", 0), ("lora", 0)]
    every = [cell(c.method, "adapt", c.knob, seed=c.seed) for c in cells]
    assert len(groups(every, {c.key: Reached(c.knob, 0.5) for c in every})["digits-mlp"]) == 6


def test_inference_latency_left_to_the_pass_needs_the_pass(tmp_path) -> None:
    from lowdim_bench.suite import SuiteError, load_suite

    body = 'name = "b"\ntasks = ["digits-mlp"]\nmethods = ["dense"]\n[protocol]\ncell_inference_latency = false\n'
    reg = Registry.load()
    assert load_suite(write_suite(tmp_path / "ok.toml", body), reg).protocol["cell_inference_latency"] is False
    with pytest.raises(SuiteError, match=r"bad\.toml") as e:
        load_suite(write_suite(tmp_path / "bad.toml", body + "interleave = false\n"), reg)
    assert "it needs interleave = true" in str(e.value)
