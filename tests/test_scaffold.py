"""`lowdim-bench new-plugin`: the files it writes (one package, several kinds), its errors, that
the generated suite plans, that each kind's example passes the conformance kit, and (slow) the
whole path in a fresh environment: install, the generated tests, a suite run whose records name
the plugin and whose analysis writes its table."""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import tomllib
from pathlib import Path

import polars as pl
import pytest

import kit_fixtures
from lowdim_bench.cli import main
from lowdim_bench.plan import make_plan
from lowdim_bench.registry import Registry
from lowdim_bench.scaffold import KINDS, ScaffoldError, names, new_plugin, render
from lowdim_bench.testing import check_analysis, check_method, check_metric, check_task

ROOT = Path(__file__).resolve().parents[1]
ALL = "adapt,compress,train,head,merge,task,metric,analysis"
PUBLIC = {"lowdim_bench.api", "lowdim_bench.layers", "lowdim_bench.testing", "lowdim_bench.hookspecs"}
SINGLE = [k if k != "merge" else "merge,task" for k in KINDS]


def imports(text: str) -> set[str]:
    """Every module a file imports."""
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("kinds", SINGLE + [ALL])
def test_render_writes_one_package_with_entry_point_suite_and_tests(kinds):
    files = render(kinds, "my-thing")
    mod = "lowdim_bench_my_thing"
    wanted = kinds.split(",")
    assert set(files) == ({"pyproject.toml", "README.md", f"{mod}/__init__.py", f"{mod}/plugin.py",
                           f"{mod}/suites/my-thing-smoke.toml", "tests/test_plugin.py"}
                          | {f"{mod}/{k}.py" for k in wanted} | {f"tests/test_{k}.py" for k in wanted})
    meta = tomllib.loads(files["pyproject.toml"])
    assert meta["project"]["name"] == "lowdim-bench-my-thing"
    assert meta["project"]["entry-points"]["lowdim_bench"] == {"my-thing": f"{mod}.plugin"}
    suite = tomllib.loads(files[f"{mod}/suites/my-thing-smoke.toml"])
    assert suite["name"] == "my-thing-smoke" and suite["reference"] == "dense" and "dense" in suite["methods"]
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")
            assert "$" not in text, path  # every placeholder filled
    for path in (p for p in files if p.startswith("tests/")):
        used = {m for m in imports(files[path]) if m.startswith("lowdim_bench.")}
        assert used <= PUBLIC, f"{path} imports {used - PUBLIC}"  # the generated tests use the public API only
        assert "Registry" not in files[path]


def test_methods_declare_typed_params_and_use_the_authoring_kit():
    files = render(ALL, "kit")
    for kind in ("adapt", "compress", "train", "head", "merge"):
        assert "params = {" in files[f"lowdim_bench_kit/{kind}.py"], kind
    assert "lowdim_bench.layers" in files["lowdim_bench_kit/adapt.py"]
    assert "members()" not in files["lowdim_bench_kit/task.py"].split("class")[0]
    assert "def members(self)" in files["lowdim_bench_kit/task.py"]  # merge makes the task a family
    assert "def members(self)" not in render("task", "kit")["lowdim_bench_kit/task.py"]


def test_names_of_several_methods_carry_their_kind():
    files = render("adapt,compress,metric", "two")
    assert 'name = "two-adapt"' in files["lowdim_bench_two/adapt.py"]
    assert 'name = "two-compress"' in files["lowdim_bench_two/compress.py"]
    assert 'name = "two"' in files["lowdim_bench_two/metric.py"]
    assert 'name = "two"' in render("adapt", "two")["lowdim_bench_two/adapt.py"]


@pytest.mark.parametrize("name", ["Bad", "1abc", "a_b", "a--b", "-a", ""])
def test_bad_names_are_refused_and_named(name):
    with pytest.raises(ScaffoldError, match=repr(name)):
        render("adapt", name)


@pytest.mark.parametrize("kinds,message", [
    ("merge", "merge,task"), ("nope", "'nope'"), ("adapt,adapt", "listed twice"), ("", "one or more"),
])
def test_bad_kinds_are_refused(kinds, message):
    with pytest.raises(ScaffoldError, match=message):
        render(kinds, "x")


def test_dist_name_and_analysis_table_clash():
    files = render("adapt", "x", dist="acme-lowrank")
    assert tomllib.loads(files["pyproject.toml"])["project"]["name"] == "acme-lowrank"
    assert "acme-lowrank 0.1.0" in files["tests/test_plugin.py"]
    with pytest.raises(ScaffoldError, match="--dist 'bad name'"):
        render("adapt", "x", dist="bad name")
    with pytest.raises(ScaffoldError, match=r"\[seeds\] would clash"):
        render("analysis", "seeds")


def test_existing_folder_is_never_overwritten(tmp_path):
    made = new_plugin("abc", "adapt", tmp_path)
    assert made.root == tmp_path / "lowdim-bench-abc" and all(p.exists() for p in made.files)
    with pytest.raises(ScaffoldError, match="already exists"):
        new_plugin("abc", "train", tmp_path)
    assert new_plugin("abc", "train", tmp_path, dist="abc-two").root == tmp_path / "abc-two"


def test_cli_new_plugin(tmp_path, capsys):
    assert main(["new-plugin", "cli-one", "--kind", "metric,analysis", "--dist", "cli-dist", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "cli-dist" / "lowdim_bench_cli_one" / "analysis.py").exists()
    out = capsys.readouterr().out
    assert "pip install -e" in out and "metric,analysis" in out
    assert main(["new-plugin", "Nope", "--dir", str(tmp_path)]) == 2
    assert "plugin name 'Nope'" in capsys.readouterr().err
    assert main(["new-plugin", "m", "--kind", "merge", "--dir", str(tmp_path)]) == 2
    assert "merge,task" in capsys.readouterr().err


def test_scaffold_modules_stay_small():
    for path in (ROOT / "lowdim_bench" / "scaffold").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path


def test_generated_suite_loads_and_plans(tmp_path, monkeypatch):
    """The smoke suite of a package with every kind passes the real suite loader (names, typed
    settings, the analysis's table, the reference) and expands to the cells it should."""
    made = new_plugin("plan-me", ALL, tmp_path)
    monkeypatch.syspath_prepend(str(made.root))
    monkeypatch.setenv("LOWDIM_BENCH_PLUGIN_MODULES", f"{made.module}.plugin")
    registry = Registry.load(strict=True)
    plan = make_plan("plan-me-smoke", registry)
    assert plan.suite.reference == "dense" and "plan_me" not in plan.meta["analyses"]
    assert plan.meta["analyses"]["plan-me"] == {"batch": 256, "min_agreement": 0.0}
    cells = {(c.method, c.kind) for c in plan.cells}
    assert cells == {("plan-me-adapt", "adapt"), ("plan-me-compress", "compress"), ("plan-me-train", "train"),
                     ("plan-me-head", "head"), ("plan-me-merge", "merge"),
                     ("dense", "adapt"), ("dense", "compress"), ("dense", "train"), ("dense", "merge")}
    assert {c.task for c in plan.cells} == {"plan-me"} and all("model" in c.save for c in plan.cells)
    assert [c.budget for c in plan.cells if c.kind == "merge" and c.method != "dense"] == [0.3]


@pytest.mark.slow
@pytest.mark.parametrize("kinds", SINGLE)
def test_each_kind_example_passes_the_kit(kinds, tmp_path, monkeypatch):
    name = "ex-" + kinds.replace(",", "-")  # a package of its own per test: imports are cached by name
    made = new_plugin(name, kinds, tmp_path)
    monkeypatch.syspath_prepend(str(made.root))
    stem = names(name)["cls"]
    task = getattr(importlib.import_module(f"{made.module}.task"), stem + "Task")() if "task" in kinds else None
    results = []
    for kind in made.kinds:
        cls = getattr(importlib.import_module(f"{made.module}.{kind}"), stem + kind.capitalize())
        if kind == "task":
            results += check_task(cls())
        elif kind == "metric":
            results += check_metric(cls, task)
        elif kind == "analysis":
            results += check_analysis(cls, {"batch": 64}, bad_tables=[{"batch": 0}], task=task)
        else:
            results += check_method(cls, task)
    assert not [str(r) for r in results if r.failed]


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory):
    return kit_fixtures.fresh_venv(tmp_path_factory.mktemp("freshvenv"))


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the first of the fresh-env tests builds the venv (minutes on a busy 2-core box)
def test_new_plugin_installs_tests_and_runs_in_a_fresh_env(fresh_venv, tmp_path):
    """A package with an adapt and a merge method, a task family, a metric and an analysis."""
    bin_ = fresh_venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LOWDIM_BENCH_PLUGIN_MODULES", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    made = subprocess.run([str(bin_ / "lowdim-bench"), "new-plugin", "fresh-kit", "--kind", "adapt,merge,task,metric,analysis",
                           "--dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    root = tmp_path / "lowdim-bench-fresh-kit"
    r = subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", "-e", str(root)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]

    listed = subprocess.run([str(bin_ / "lowdim-bench"), "list", "plugins"], capture_output=True, text=True, env=env)
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("fresh-kit"))
    assert " ok " in line and "lowdim-bench-fresh-kit 0.1.0" in line
    assert all(p in line for p in ("method:fresh-kit-adapt", "method:fresh-kit-merge", "task:fresh-kit",
                                   "metric:fresh-kit", "analysis:fresh-kit"))

    tests = subprocess.run([str(bin_ / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root,
                           capture_output=True, text=True, env=env, timeout=900)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "41 passed" in tests.stdout  # adapt 13, merge 13, task 7, metric 2, analysis 4, entry point 2

    out = tmp_path / "reports"
    run = subprocess.run([str(bin_ / "lowdim-bench"), "run", "fresh-kit-smoke", "--out", str(out), "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run_dir = next(out.glob("*/records.parquet")).parent
    df = pl.read_parquet(run_dir / "records.parquet")
    assert set(df.filter(pl.col("status") != "ok")["status"]) == set(), df.filter(pl.col("status") != "ok")["error"][0]
    mine = df.filter(pl.col("method").str.starts_with("fresh-kit"))
    assert set(mine.filter(pl.col("plugin").is_not_null())["plugin"]) == {"lowdim-bench-fresh-kit"}
    assert {"params_trainable", "flops_forward", "update_effective_rank", "quality_member"} <= set(mine["metric"])
    assert "agreement_with_reference" in set(df["metric"])
    table = pl.read_csv(run_dir / "fresh-kit.csv")
    assert set(table["method"]) == {"fresh-kit-adapt", "fresh-kit-merge"} and table["agreement"].is_between(0, 1).all()
    assert df.filter(pl.col("method") == "dense")["reference"].all()


def test_hook_reference_in_docs_is_current():
    """docs/plugins.md's hook reference is what scripts/gen_hook_reference.py makes from the code."""
    import importlib.util

    path = ROOT / "scripts" / "gen_hook_reference.py"
    spec = importlib.util.spec_from_file_location("gen_hook_reference", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.DOC.read_text()
    assert gen.updated(text) == text, "docs/plugins.md is stale: run python scripts/gen_hook_reference.py"
    assert "#### `register_methods(" in text and "#### `suite_paths()" in text
    assert "### `Analysis` (lowdim_bench.api)" in text and "- `validate(self, raw: Any, suite: SuiteView)" in text


def test_plugins_doc_covers_every_public_type():
    from lowdim_bench import api, layers

    text = (ROOT / "docs" / "plugins.md").read_text()
    missing = [n for n in api.__all__ if f"`{n}`" not in text and f"`{n}(" not in text]
    assert not missing, f"docs/plugins.md does not document {missing}"
    kit = [n for n, v in vars(layers).items() if not n.startswith("_") and (n.isupper() or (
        (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == layers.__name__))]
    missing = [n for n in kit if f"`{n}" not in text]
    assert not missing, f"docs/plugins.md does not document lowdim_bench.layers {missing}"
