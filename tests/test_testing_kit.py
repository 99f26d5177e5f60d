"""The conformance kit: it passes a correct plugin, catches each known bug in its own test with
a message that says what was expected and what was seen, and every built-in plugin passes it."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import kit_fixtures as fx
import kit_fixtures_v2 as fx2
from lowdim_bench.registry import Registry
from lowdim_bench.testing import (ANALYSIS_CHECKS, ConformanceError, KitOptions, METHOD_CHECKS, assert_method_conforms,
                                  check_analysis, check_method, check_metric, check_task)
from lowdim_bench.testing.method_checks import sweep
from lowdim_bench.testing.probes import hidden_tensors, mostly_zero_tensors, scattered_zero_fraction
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask


@pytest.fixture(scope="module")
def small_task():
    return DigitsTask(hidden=32)


def by_check(results):
    return {r.check: r for r in results}


def test_correct_adapter_passes_every_check(small_task):
    results = check_method(fx.TinyLora, small_task)
    assert [r.check for r in results] == list(METHOD_CHECKS)
    assert not [str(r) for r in results if r.failed]
    assert all(r.skipped is None for r in results)  # every check applied to it


def test_catches_a_method_that_mutates_the_base(small_task):
    r = by_check(check_method(fx.MutatesBase, small_task, checks=["base_untouched"]))["base_untouched"]
    assert r.failed
    assert "requires_grad changed" in r.seen and "True->False" in r.seen
    assert "unchanged by apply" in r.expected


def test_catches_a_method_that_shares_tensors_with_the_base(small_task):
    r = check_method(fx.SharesBase, small_task, checks=["base_untouched"])[0]
    assert r.failed and "share tensors" in r.seen and "values changed" in r.seen


def test_catches_a_false_identity_at_init(small_task):
    r = check_method(fx.NotIdentity, small_task, checks=["identity_at_init"])[0]
    assert r.failed
    assert "identity_at_init declares" in r.expected and "max |difference|" in r.seen
    assert float(r.seen.split("max |difference| ")[1].split()[0]) > 1e-3


def test_catches_a_method_that_under_reports_its_parameters(small_task):
    results = by_check(check_method(fx.UnderReports, small_task, checks=["params_honest", "state_dict_round_trip"]))
    r = results["params_honest"]
    assert r.failed
    assert "the optimizer updates 6 tensor(s), 808 elements" in r.seen and "0 trainable" in r.seen
    assert "factors[0]" in r.seen  # names the hidden tensors
    assert results["state_dict_round_trip"].failed  # the hidden factors are not saved either


def test_catches_a_sparse_part_counted_dense(small_task):
    results = by_check(check_method(fx.SparseCountedDense, small_task, checks=["params_honest", "flops"]))
    assert results["params_honest"].failed and "mostly zeros" in results["params_honest"].seen
    assert "body.0.weight" in results["params_honest"].seen
    assert results["flops"].failed and "multiplies mostly-zero weights" in results["flops"].seen


def test_catches_a_method_drawing_from_the_global_rng(small_task):
    r = check_method(fx.GlobalRng, small_task, checks=["deterministic"])[0]
    assert r.failed and "A" in r.seen


def test_catches_a_knob_that_shrinks_the_count(small_task):
    r = check_method(fx.Shrinking, small_task, checks=["budget_monotone"])[0]
    assert r.failed and "decreases between" in r.seen


def test_smoke_run_enforces_its_time_limit(small_task):
    r = check_method(fx.TinyLora, small_task, checks=["smoke_run"], options=KitOptions(time_limit_s=0.0))[0]
    assert r.failed and "within 0 s" in r.expected


def test_assert_form_raises_with_expected_and_seen(small_task):
    with pytest.raises(ConformanceError) as info:
        assert_method_conforms(fx.NotIdentity, small_task, checks=["identity_at_init", "deterministic"])
    text = str(info.value)
    assert "1 conformance check(s) failed" in text and "expected:" in text and "seen:" in text
    assert [r.check for r in info.value.results] == ["identity_at_init", "deterministic"]


def test_unknown_check_is_named():
    with pytest.raises(KeyError, match="nope"):
        check_method(fx.TinyLora, DigitsTask(hidden=32), checks=["nope"])


def test_zero_scan_ignores_untrained_zero_rows_but_flags_masks():
    b = torch.zeros(64, 8)
    b[:10] = 1.0  # a zero-initialised factor whose rows got gradient only where units were live
    assert scattered_zero_fraction(b) == 0.0
    mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) < 0.1
    masked = torch.nn.Linear(64, 64)
    with torch.no_grad():
        masked.weight.mul_(mask)
    assert [n for n, *_ in mostly_zero_tensors(masked)] == ["weight"]


def test_hidden_tensor_scan_finds_containers():
    m = torch.nn.Linear(4, 4)
    m.extra = {"w": torch.ones(3, 3)}
    m.scale = torch.tensor(2.0)  # one element: a constant, not state
    assert [p for p, _ in hidden_tensors(m)] == ["extra['w']"]


def test_sweep_covers_both_ends():
    assert sweep(1, 4, True, 6) == [1, 2, 3, 4]
    vals = sweep(1, 128, True, 6)
    assert vals[0] == 1 and vals[-1] == 128 and vals == sorted(set(vals))


# ---- tasks and metrics ----------------------------------------------------------------------

def test_correct_task_passes():
    results = check_task(fx.BlobTask())
    assert not [str(r) for r in results if r.failed]


def test_catches_overlapping_splits():
    r = by_check(check_task(fx.LeakyTask(), ["splits_disjoint"]))["splits_disjoint"]
    assert r.failed and "40 shared samples" in r.seen and "train and val" in r.expected


def test_a_model_drawing_from_the_global_rng_passes_under_the_harness_seeding():
    """The harness seeds the global RNG before make_model (run/models.py), so this is reproducible;
    the kit says so rather than failing it."""
    r = check_task(fx.UnseededTask(), ["base_reproducible"])[0]
    assert r.passed and "global RNG" in r.seen


def test_catches_a_base_model_no_seeding_makes_reproducible():
    r = check_task(fx2.EntropyTask(), ["base_reproducible"])[0]
    assert r.failed and "same weights under the harness's seeding" in r.expected and "differ" in r.seen


def test_a_task_with_dropout_passes():
    task = fx2.DropoutTask()
    unseeded = []  # without the harness's seeding, two trainings differ (the masks): the fixture matters
    for rng in (1, 2):
        model = task.make_model(0)
        torch.manual_seed(rng)
        model.train()
        x = task.splits("target", 0)["train"][0][:16]
        unseeded.append(model(x).detach())
    assert not torch.equal(*unseeded)
    results = by_check(check_task(task))
    assert not [str(r) for r in results.values() if r.failed]
    assert results["base_reproducible"].passed


def test_catches_a_quality_without_direction():
    r = check_task(fx.NoDirectionTask(), ["quality_direction"])[0]
    assert r.failed and "higher_is_better" in r.expected


def test_metric_checks():
    assert not check_metric(fx.DepthMetric, fx.BlobTask())[0].failed
    r = check_metric(fx.UnitlessMetric, fx.BlobTask())[0]
    assert r.failed and "no unit" in r.seen
    r = check_metric(fx.DictMetric, fx.BlobTask())[0]
    assert r.failed and "is not a Measurement" in r.seen


def test_metric_context_is_the_harness_one():
    """A metric reading ctx.base_model (trained 3 steps away from it) or a declared applied_model
    passes; one reading applied_model without declaring it fails and is told why."""
    r = check_metric(fx2.UpdateNormMetric, fx.BlobTask())[0]
    assert r.passed and "update_norm" in r.seen
    assert check_metric(fx2.AppliedMetric, fx.BlobTask())[0].passed
    r = check_metric(fx2.UndeclaredAppliedMetric, fx.BlobTask())[0]
    assert r.failed and 'needs = ("applied_model",)' in r.seen
    r = check_metric(fx2.UnknownNeedsMetric, fx.BlobTask())[0]
    assert r.failed and "optimizer_state" in r.seen


def test_metric_context_values():
    from lowdim_bench.testing import measure_context

    ctx = measure_context(fx.BlobTask(), needs=("applied_model",))
    assert set(ctx.splits) == {"train", "val", "test"} and ctx.members == {}
    assert not any(p.requires_grad for p in ctx.base_model.parameters())
    moved = [n for n, p in ctx.model.named_parameters() if not torch.equal(p, dict(ctx.base_model.named_parameters())[n])]
    assert moved  # trained away from the base
    assert all(torch.equal(p, dict(ctx.base_model.named_parameters())[n]) for n, p in ctx.applied_model.named_parameters())
    assert measure_context(fx.BlobTask()).applied_model is None


# ---- analyses -------------------------------------------------------------------------------

GOOD = {"metric": "quality_val"}


def test_correct_analysis_passes_every_check():
    results = check_analysis(fx2.MeanByMethod, GOOD, bad_tables=[42, {"metric": "loss"}], task=fx.BlobTask())
    assert [r.check for r in results] == list(ANALYSIS_CHECKS)
    assert not [str(r) for r in results if r.failed]
    assert "6 saved models seen" in results[-1].seen  # dense x 2 seeds, lora x 2 budgets x 2 seeds


@pytest.mark.parametrize("fixture,check,seen", [
    (fx2.RaisesValueError, "validate", "ValueError: not a table"),
    (fx2.AcceptsAnything, "validate", "it was accepted"),
    (fx2.NestedTable, "run", "does not write as CSV"),
    (fx2.NanRecord, "run", "not a finite number"),
])
def test_catches_an_analysis_bug(fixture, check, seen):
    r = check_analysis(fixture, GOOD, task=fx.BlobTask(), checks=[check])[0]
    assert r.failed and seen in r.seen


def test_an_analysis_that_owns_a_table_needs_one_to_check():
    results = check_analysis(fx2.MeanByMethod, task=fx.BlobTask(), checks=["validate", "run"])
    assert all(r.skipped and "table=" in r.skipped for r in results)


def test_builtin_analyses_pass_the_kit():
    claims = [{"name": "lora beats dense", "text": "t", "task": "digits-mlp",
               "checks": [{"a": "lora@0.5", "b": "dense@full", "relation": "not_worse", "tolerance": 1.0}]}]
    bad_claims = [42, [{"name": "x", "text": "t", "task": "nope", "checks": [{"a": "lora@0.5", "b": "dense@full"}]}]]
    assert not [str(r) for r in check_analysis(Registry.load().analysis("claims").cls, claims, bad_tables=bad_claims)
                if r.failed]
    entries = {"dense": "dense", "intrinsic": "intrinsic"}
    results = check_analysis(Registry.load().analysis("d_int90").cls, {}, entries=entries,
                             bad_tables=[42, {"threshold": "high"}])
    assert not [str(r) for r in results if r.failed]


# ---- merge methods and keyword-input tasks ---------------------------------------------------

def test_correct_merge_passes_on_the_kit_family():
    results = by_check(check_method(fx2.AverageMerge))
    assert not [str(r) for r in results.values() if r.failed]
    assert results["smoke_run"].passed and "per member" in results["smoke_run"].seen
    assert results["base_untouched"].passed and results["budget_monotone"].skipped


def test_catches_a_merge_that_mutates_a_member():
    r = check_method(fx2.MutatesMembers, checks=["base_untouched"])[0]
    assert r.failed and "member 'a'" in r.seen and "values changed" in r.seen


def test_a_merge_needs_a_task_family():
    with pytest.raises(Exception, match="needs a task with a family"):
        check_method(fx2.AverageMerge, fx.BlobTask())


def test_keyword_task_with_a_pretrained_base():
    """Dict batches, keyword-only forward, a pretrained base (make_model would raise)."""
    from coreplugins import DictTask

    assert not [str(r) for r in check_task(DictTask()) if r.failed]
    checks = ["base_untouched", "kind", "identity_at_init", "params_honest", "flops", "state_dict_round_trip",
              "smoke_run", "inference_form"]
    assert not [str(r) for r in check_method(fx.TinyLora, DictTask(), checks=checks) if r.failed]


def test_a_registered_method_by_name():
    r = check_method("lora", fx.BlobTask(), checks=["identity_at_init"])[0]
    assert r.passed and "'lora'" in r.subject


def test_pytest_plugin_fixture_runs_checks(tmp_path):
    """The `lowdim_kit` fixture, as a plugin author's test uses it (pytest in a subprocess)."""
    (tmp_path / "test_mine.py").write_text(textwrap.dedent('''
        import pytest
        import kit_fixtures as fx
        from lowdim_bench.testing import ConformanceError
        from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
        TASK = DigitsTask(hidden=32)

        @pytest.mark.parametrize("check", ["identity_at_init", "kind"])
        def test_good(lowdim_kit, check):
            assert lowdim_kit.method(fx.TinyLora, TASK, checks=[check])

        def test_bad(lowdim_kit):
            with pytest.raises(ConformanceError, match="identity_at_init"):
                lowdim_kit.method(fx.NotIdentity, TASK, checks=["identity_at_init"])

        def test_task_and_metric(lowdim_kit, lowdim_smoke_task):
            assert lowdim_smoke_task.name == "digits-mlp"
            lowdim_kit.task(fx.BlobTask(), checks=["splits_disjoint"])
            lowdim_kit.metric(fx.DepthMetric, fx.BlobTask())
    '''))
    import os
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "lowdim_bench.testing.pytest_plugin", "-p", "no:cacheprovider",
                        str(tmp_path / "test_mine.py")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "4 passed" in r.stdout


# ---- every built-in plugin passes the kit ----------------------------------------------------

# Test-size options for tasks whose defaults are sized for a real run (checks, not quality).
SMALL = {"stdlib-lm": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "context": 32, "eval_windows": 8,
                       "max_corpus_bytes": 200_000}}
SMALL["stdlib-lm-family"] = {**SMALL["stdlib-lm"], "member_corpus_bytes": 60_000}
_CTR_SMALL = {"n_train": 2000, "n_val": 500, "n_test": 1000, "vocab": 100, "vocab_min": 10, "n_fields": 4,
              "bayes_rows": 20_000, "hidden": [16], "embed_dim": 8, "att_layers": 1, "att_units": 8}
SMALL.update({"ctr": _CTR_SMALL, "ctr-autoint": _CTR_SMALL})
# Plugins that only work on their own family's task (embedding-table methods, the ctr metric):
# the kit runs them there, at test size (name -> (task, method hyper-parameters)).
OWN_TASK = {"dnis": ("ctr", {"search_steps": 20}), "mixed-dim": ("ctr", {}), "ctr": ("ctr", {}),
            "seq-flops": ("hf-text", {})}
SMALL["hf-text"] = {"max_length": 16, "max_train": 64, "max_eval": 32, "finetune_steps": 2, "recover_steps": 2}
# Metrics that speak on merge cells only: tests/test_method_merging.py runs the kit on a merge context.
MERGE_METRICS = {"merge-cost", "merge-quality"}


# Tasks for methods whose targets name a slot only some tasks have (the VQ methods' `quantizer`).
SLOT_TASKS = {"quantizer": "vq-digits"}


def _builtin_entries():
    reg = Registry.load()
    entries = []
    for info in sorted(reg.plugins.values(), key=lambda p: p.name):
        if not info.builtin:
            continue
        if info.status == "broken":
            reason = (info.error or "").strip().splitlines()[-1]
            entries.append(pytest.param(None, None, None, id=f"{info.name}-BROKEN",
                                        marks=pytest.mark.skip(reason=f"plugin {info.name!r} is broken: {reason}")))
            continue
        for what in info.provides:
            kind_of, name = what.split(":", 1)
            if kind_of == "method":
                cls = reg.methods[name].cls
                for kind in cls.supported_kinds():
                    if kind != "merge":  # merge kinds: tests/test_method_merging.py, with CPU-sized steps
                        entries.append(pytest.param("method", name, kind, id=f"method-{name}-{kind}"))
            elif kind_of in ("task", "metric") and name not in MERGE_METRICS:
                entries.append(pytest.param(kind_of, name, None, id=f"{kind_of}-{name}"))
    return entries


@pytest.mark.slow
@pytest.mark.parametrize("what,name,kind", _builtin_entries())
def test_builtin_plugin_passes_the_kit(what, name, kind):
    reg = Registry.load()
    own, hparams = OWN_TASK.get(name, (None, {}))
    task = reg.task(own).cls(**SMALL.get(own, {})) if own else None
    if what == "method":
        cls = reg.method(name).cls
        task = task or next((SLOT_TASKS[t] for t in cls.targets if t in SLOT_TASKS), None)
        results = check_method(cls, task, kind=kind, **hparams)
    elif what == "task":
        results = check_task(reg.task(name).cls(**SMALL.get(name, {})))
    else:
        results = check_metric(reg.metric(name).cls, task)
    failures = [str(r) for r in results if r.failed]
    assert not failures, "\n".join(failures)


# ---- plugin control: block list and tracing ----------------------------------------------------

def test_block_list_skips_plugins_by_name(monkeypatch, fake_plugins):
    monkeypatch.setenv("LOWDIM_BENCH_BLOCK_PLUGINS", "svd, fakeplugins")
    reg = Registry.load()
    assert reg.plugins["svd"].status == "skipped" and "LOWDIM_BENCH_BLOCK_PLUGINS" in reg.plugins["svd"].error
    assert "svd" not in reg.methods and "lora" in reg.methods
    assert reg.plugins["fakeplugins"].status == "skipped" and "tiny" not in reg.tasks
    monkeypatch.delenv("LOWDIM_BENCH_BLOCK_PLUGINS")
    assert "svd" in Registry.load().methods


def test_trace_prints_each_hook_call(monkeypatch, capsys):
    monkeypatch.setenv("LOWDIM_BENCH_TRACE_PLUGINS", "1")
    Registry.load()
    err = capsys.readouterr().err
    assert "call register_methods of plugin 'lora' (lowdim_bench_builtin.methods.lora)" in err
    assert "lora: register('LoraMethod') as method 'lora'" in err
    monkeypatch.setenv("LOWDIM_BENCH_TRACE_PLUGINS", "0")
    Registry.load()
    assert "call register_methods" not in capsys.readouterr().err
