"""The core v2 contract end to end: one plan API for CLI and app, analyses as plugins, metrics that
see the base model, keyword-input tasks with a pretrained base, budget scope and over-budget
flags, merge cells on a task family, artefacts, and plugin code versions."""
from __future__ import annotations

import importlib
import json
import os
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import torch

from conftest import TESTS, write_suite
from lowdim_bench.plan import make_plan
from lowdim_bench.registry import Registry, code_version, module_closure
from lowdim_bench.suite import Overrides, SuiteError


@pytest.fixture
def core_plugins(monkeypatch):
    monkeypatch.setenv("LOWDIM_BENCH_PLUGIN_MODULES", "fakeplugins,coreplugins")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    if str(TESTS) not in sys.path:
        monkeypatch.syspath_prepend(str(TESTS))
    return Registry.load(strict=True)


CLAIMS = """
name = "c"
seeds = [0, 1]
budgets = [0.2, 0.5]
measure = ["params"]
tasks = ["tiny"]
[methods.fake-head]
[methods.dense]
kinds = ["adapt"]
[methods.fake-width]
[[claims]]
name = "head"
text = "training the head alone is nearly as good"
task = "tiny"
kind = "adapt"
[[claims.checks]]
a = "fake-head"
b = "dense"
relation = "not_worse"
tolerance = 0.5
"""


def test_cli_and_app_plans_are_equal(tmp_path, core_plugins):
    from lowdim_bench.tui import model

    path = write_suite(tmp_path / "s.toml", CLAIMS)
    cli = make_plan(path, core_plugins, Overrides(budgets=[0.3], seeds=[2], methods=["fake-head", "dense"],
                                                  device="cpu"))
    suite = model.load_suite_plan(path, core_plugins)
    sel = model.Selection(methods=["fake-head", "dense"], tasks=["tiny"], device="cpu", budgets="0.3", seeds="2")
    cells, meta = model.plan_cells(suite, core_plugins, sel)
    assert [c.key for c in cells] == [c.key for c in cli.cells] and len(cells) == 2
    assert meta == cli.meta and meta["analyses"]["claims"][0]["name"] == "head"


@pytest.mark.parametrize("overrides, message", [
    (Overrides(budgets=[5.0]), r"--budgets: Input should be less than or equal to 1, got 5.0"),
    (Overrides(budgets=[float("nan")]), r"--budgets: Input should be a finite number"),
    (Overrides(seeds=[-1]), r"--seeds: Input should be greater than or equal to 0, got -1"),
    (Overrides(seeds=[0, 0]), r"--seeds: 0 is listed twice"),
    (Overrides(knobs=[2.5]), r"--knobs: knob 'width' takes integers, got \[2.5\]"),
    (Overrides(knobs=[float("inf")]), r"--knobs: Input should be a finite number"),
    (Overrides(timeout_s=-5.0), r"--timeout: Input should be greater than 0, got -5.0"),
    (Overrides(device="cuda:99"), r"--device 'cuda:99'"),
    (Overrides(methods=["lora"]), r"--methods: \['lora'\] not in suite 'c'"),
])
def test_overrides_are_validated_like_the_suite(tmp_path, core_plugins, overrides, message):
    with pytest.raises(SuiteError, match=message):
        make_plan(write_suite(tmp_path / "s.toml", CLAIMS), core_plugins, overrides)


def test_duplicate_cells_are_refused_at_plan_time(tmp_path, core_plugins):
    """Repeated seeds or budgets used to crash the runner with KeyError at --jobs 2 (and every resume)."""
    path = write_suite(tmp_path / "s.toml", CLAIMS)
    with pytest.raises(SuiteError, match=r"--budgets: 0.1 is listed twice"):
        make_plan(path, core_plugins, Overrides(budgets=[0.1, 0.1]))
    with pytest.raises(SuiteError, match=r"s.toml:3: field 'seeds': 0 is listed twice"):
        make_plan(write_suite(tmp_path / "s.toml", CLAIMS.replace("[0, 1]", "[0, 0]")), core_plugins)


def test_typed_settings_refuse_wrong_types(tmp_path, core_plugins):
    body = 'name = "t"\nmeasure = []\n[tasks.dict-tiny]\nn = -5\n[methods.dense]\n'
    with pytest.raises(SuiteError, match=r"s.toml:4: \[tasks.dict-tiny\] field 'n': task 'dict-tiny': n = -5 is "
                                         r"outside \[30, inf\]"):
        make_plan(write_suite(tmp_path / "s.toml", body), core_plugins)
    body = 'name = "t"\nmeasure = []\ntasks = ["digits-mlp"]\n[methods.svd]\nrecover = "yes"\n'
    with pytest.raises(SuiteError, match=r"field 'recover': method 'svd': recover = 'yes' is not a valid bool"):
        make_plan(write_suite(tmp_path / "s.toml", body), core_plugins)


def run_suite(tmp_path, body: str, jobs: int = 2):
    from lowdim_bench.cli import main

    path = write_suite(tmp_path / "s.toml", body)
    code = main(["run", str(path), "--out", str(tmp_path / "r"), "--device", "cpu", "--jobs", str(jobs)])
    run_dir = next((tmp_path / "r").iterdir())
    return code, run_dir, pl.read_parquet(run_dir / "records.parquet")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_started_from_the_app_writes_claims(tmp_path, core_plugins):
    from lowdim_bench.tui import model
    from lowdim_bench.tui.session import RunSession

    path = write_suite(tmp_path / "s.toml", CLAIMS.replace("seeds = [0, 1]", "seeds = [0]"))
    suite = model.load_suite_plan(path, core_plugins)
    cells, meta = model.plan_cells(suite, core_plugins, model.Selection(methods=["fake-head", "dense"], tasks=["tiny"],
                                                                       device="cpu"))
    res = RunSession(cells, meta, core_plugins, tmp_path / "r", "cpu", 2, post=lambda update: None).run()
    table = pl.read_csv(res.run_dir / "claims.csv")
    assert table["claim"].to_list() == ["head"] and table["verdict"][0] == "inconclusive"  # one seed decides nothing


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_third_party_analysis_writes_its_table_and_records(tmp_path, core_plugins):
    body = 'name = "a"\nmeasure = []\nanalyses = ["fixture-table"]\ntasks = ["tiny"]\n[methods.fake-head]\n' \
           '[methods.dense]\nkinds = ["adapt"]\n'
    code, run_dir, df = run_suite(tmp_path, body)
    assert code == 0
    table = pl.read_csv(run_dir / "fixture-table.csv")
    assert table["method"].to_list() == ["dense", "fake-head"]
    mine = df.filter(pl.col("cell_key") == "analysis:fixture-table")
    assert sorted(mine["method"].to_list()) == ["dense", "fake-head"]
    assert "## Fixture table" in (run_dir / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_metric_sees_the_base_model_on_lora_and_dense(tmp_path, core_plugins):
    body = ('name = "u"\nmeasure = ["update-rank"]\ntasks = ["tiny"]\n[methods.dense]\nkinds = ["adapt"]\n'
            '[methods.lora]\nknobs = [1]\n')
    code, _, df = run_suite(tmp_path, body)
    assert code == 0
    rank = {r["method"]: r["value"] for r in df.filter(pl.col("metric") == "update_effective_rank").to_dicts()}
    assert 0 < rank["lora"] <= 2 + 1e-3  # two adapted Linears, rank 1 each (float32 probing noise)
    assert rank["dense"] > rank["lora"] + 1  # full fine-tuning moves every direction a little


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_keyword_task_with_pretrained_base_runs_every_kind_of_method(tmp_path, core_plugins):
    from coreplugins import D, SEQ, dense_flops_per_sample

    body = textwrap.dedent("""
        name = "kw"
        budgets = [0.5]
        measure = ["params", "flops"]
        tasks = ["dict-tiny"]
        [methods.dense]
        kinds = ["adapt", "compress"]
        [methods.lora]
        [methods.svd]
        [methods.afm]
    """)
    code, _, df = run_suite(tmp_path, body)
    assert code == 0, df.filter(pl.col("status") == "failed")["error"].to_list()
    cells = df.filter(pl.col("metric") == "flops_forward")
    assert set(zip(cells["method"], cells["kind"])) == {("dense", "adapt"), ("dense", "compress"), ("lora", "adapt"),
                                                       ("svd", "compress"), ("afm", "compress")}
    assert set(cells["seq_len"].to_list()) == {SEQ} and set(cells["batch_size"].to_list()) == {64}
    dense = cells.filter(pl.col("method") == "dense")["value"].to_list()
    assert dense == [dense_flops_per_sample()] * 2
    svd = cells.filter(pl.col("method") == "svd").to_dicts()[0]
    r = int(svd["knob"])
    head = 2 * r * (D + 3) if r * (D + 3) < D * 3 else 2 * D * 3  # svd factors the head below break-even
    assert svd["value"] == 2 * SEQ * 2 * D * r + head  # proj as two rank-r factors
    assert set(df["budget_scope"].drop_nulls().to_list()) == {"all parameters but the embedding table"}
    config = json.loads(df.filter(pl.col("metric") == "quality")["config"][0])
    assert config["base_model"]["pretrained"] is True


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_over_budget_cell_is_flagged(tmp_path, core_plugins):
    from lowdim_bench import report

    body = 'name = "o"\nmeasure = ["params"]\nbudgets = [0.001]\ntasks = ["tiny"]\n[methods.lora]\n'
    code, run_dir, df = run_suite(tmp_path, body, jobs=1)
    assert code == 0
    assert df.filter(pl.col("metric") == "quality")["over_budget"].to_list() == [True]
    assert " over" in report.render_table(report.summary(df))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_merge_method_runs_on_a_task_family(tmp_path, core_plugins):
    body = ('name = "m"\nmeasure = ["params"]\nbudgets = [1.0]\ntasks = ["family-tiny"]\n'
            '[methods.fixture-merge]\n[methods.dense]\nkinds = ["merge"]\n')
    code, _, df = run_suite(tmp_path, body)
    assert code == 0, df.filter(pl.col("status") == "failed")["error"].to_list()
    merged = df.filter(pl.col("method") == "fixture-merge")
    per = merged.filter(pl.col("metric") == "quality_member")
    alone = merged.filter(pl.col("metric") == "quality_individual")
    assert sorted(per["phase"].to_list()) == ["a", "b", "c"] == sorted(alone["phase"].to_list())
    mean = merged.filter(pl.col("metric") == "quality")["value"][0]
    assert mean == pytest.approx(sum(per["value"].to_list()) / 3)
    assert merged.filter(pl.col("metric") == "budget_reached")["value"][0] == 1.0
    assert df.filter((pl.col("method") == "dense") & (pl.col("metric") == "quality")).height == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_saved_models_load_back_for_analyses(tmp_path, core_plugins):
    from lowdim_bench.run.artefacts import RunArtefacts

    body = 'name = "s"\nmeasure = []\nsave = ["model"]\ntasks = ["tiny"]\n[methods.lora]\nknobs = [2]\n'
    code, run_dir, df = run_suite(tmp_path, body, jobs=1)
    assert code == 0
    arts = RunArtefacts(run_dir, core_plugins)
    (info,) = arts.list("model")
    assert info.method == "lora" and info.bytes > 0 and info.path.suffix == ".safetensors"
    model = arts.load_model(info.cell_key)
    quality = arts.task(info.cell_key).evaluate(model, arts.splits(info.cell_key)["test"])
    assert quality == df.filter(pl.col("metric") == "quality")["value"][0]
    assert df.filter(pl.col("metric") == "artefact_bytes")["value"][0] == info.bytes


def test_a_helper_module_change_gives_a_new_code_version(tmp_path, monkeypatch):
    pkg = tmp_path / "helperpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("SCALE = 1\n")
    (pkg / "method.py").write_text("from . import helper\nclass M:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from lowdim_bench.registry import PluginInfo

    info = PluginInfo("p", "helperpkg.method", "dist", "1.0")
    mod = importlib.import_module("helperpkg.method")
    assert "helperpkg.helper" in module_closure("helperpkg.method")
    before = code_version(mod.M, info)
    (pkg / "helper.py").write_text("SCALE = 2\n")
    importlib.reload(sys.modules["helperpkg.helper"])
    assert code_version(mod.M, info) != before
    for name in [m for m in sys.modules if m.startswith("helperpkg")]:
        del sys.modules[name]


def test_no_import_cycles_in_the_core():
    """Every import of lowdim_bench (a function-level one too) as an edge: the graph has no cycle."""
    import ast

    root = Path(__file__).resolve().parents[1] / "lowdim_bench"
    modules = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = (f, rel.name == "__init__")
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (f, is_pkg) in modules.items():
        pkg = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    up = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{up}.{base}" if base else up
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    # Tarjan-free check: depth-first search for a back edge
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_plugin_names_in_the_core():
    """The core names no plugin: built-in method and task names appear in no string of lowdim_bench/
    (the authoring kit's defaults and the scaffold's templates, which are examples, aside)."""
    import ast

    reg = Registry.load()
    names = {n for n, p in {**reg.methods, **reg.tasks}.items() if p.plugin.builtin}
    root = Path(__file__).resolve().parents[1] / "lowdim_bench"
    found = []
    for f in root.rglob("*.py"):
        if f.name.startswith("scaffold") or "scaffold" in f.parts or "testing" in f.parts:
            continue
        tree = ast.parse(f.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(
            n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and node.value in names:
                found.append(f"{f.relative_to(root)}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_every_builtin_plugin_declares_typed_settings():
    """`list methods --verbose` has a type for every setting; no setting is left untyped by accident."""
    from lowdim_bench.hparams import declared

    reg = Registry.load()
    for table in (reg.methods, reg.tasks):
        for name, prov in table.items():
            if prov.plugin.builtin:
                for key, p in declared(prov.cls).items():
                    assert p.help, f"{name}.{key} has no help text"
