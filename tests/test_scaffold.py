"""`lowdim-bench new-plugin`: the files it writes, its errors, that each kind's example passes
the conformance kit, and (slow) the whole path in a fresh environment: install, the generated
tests, a suite run whose records name the plugin."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib

import polars as pl
import pytest

import kit_fixtures
from lowdim_bench.cli import main
from lowdim_bench.scaffold import KINDS, ScaffoldError, new_plugin, render
from lowdim_bench.testing import check_method, check_metric, check_task


@pytest.mark.parametrize("kind", KINDS)
def test_render_writes_a_package_with_entry_point_suite_and_tests(kind):
    files = render(kind, "my-thing")
    mod = "lowdim_bench_my_thing"
    assert set(files) == {"pyproject.toml", "README.md", f"{mod}/__init__.py", f"{mod}/plugin.py",
                          f"{mod}/suites/my-thing-smoke.toml", f"tests/test_{mod}.py"}
    meta = tomllib.loads(files["pyproject.toml"])
    assert meta["project"]["name"] == "lowdim-bench-my-thing"
    assert meta["project"]["entry-points"]["lowdim_bench"] == {"my-thing": f"{mod}.plugin"}
    assert tomllib.loads(files[f"{mod}/suites/my-thing-smoke.toml"])["name"] == "my-thing-smoke"
    for path in (f"{mod}/plugin.py", f"tests/test_{mod}.py"):
        compile(files[path], path, "exec")
    assert "lowdim_bench.testing" in files[f"tests/test_{mod}.py"] or "lowdim_kit" in files[f"tests/test_{mod}.py"]
    assert "$" not in files[f"{mod}/plugin.py"]  # every placeholder filled


@pytest.mark.parametrize("name", ["Bad", "1abc", "a_b", "a--b", "-a", ""])
def test_bad_names_are_refused_and_named(name):
    with pytest.raises(ScaffoldError, match=repr(name)):
        render("adapt", name)


def test_merge_and_unknown_kinds_are_refused():
    with pytest.raises(ScaffoldError, match="merge"):
        render("merge", "x")
    with pytest.raises(ScaffoldError, match="'nope'"):
        render("nope", "x")


def test_existing_folder_is_never_overwritten(tmp_path):
    made = new_plugin("abc", "adapt", tmp_path)
    assert made.root == tmp_path / "lowdim-bench-abc" and all(p.exists() for p in made.files)
    with pytest.raises(ScaffoldError, match="already exists"):
        new_plugin("abc", "train", tmp_path)


def test_cli_new_plugin(tmp_path, capsys):
    assert main(["new-plugin", "cli-one", "--kind", "metric", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "lowdim-bench-cli-one" / "lowdim_bench_cli_one" / "plugin.py").exists()
    assert "pip install -e" in capsys.readouterr().out
    assert main(["new-plugin", "Nope", "--dir", str(tmp_path)]) == 2
    assert "plugin name 'Nope'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_example_passes_the_kit(kind, tmp_path, monkeypatch):
    name = f"ex-{kind}"
    made = new_plugin(name, kind, tmp_path)
    monkeypatch.syspath_prepend(str(made.root))
    plugin = importlib.import_module(f"{made.module}.plugin")
    cls = "Ex" + kind.capitalize()
    if kind == "task":
        results = check_task(getattr(plugin, cls + "Task")())
    elif kind == "metric":
        results = check_metric(getattr(plugin, cls + "Metric"))
    else:
        results = check_method(getattr(plugin, cls + "Method"))
    assert not [str(r) for r in results if r.failed]


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory):
    return kit_fixtures.fresh_venv(tmp_path_factory.mktemp("freshvenv"))


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first of the fresh-env tests builds the venv (minutes on a busy 2-core box)
def test_new_plugin_installs_tests_and_runs_in_a_fresh_env(fresh_venv, tmp_path):
    bin_ = fresh_venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LOWDIM_BENCH_PLUGIN_MODULES", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    made = subprocess.run([str(bin_ / "lowdim-bench"), "new-plugin", "fresh-adapter", "--dir", str(tmp_path)],
                          capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    root = tmp_path / "lowdim-bench-fresh-adapter"
    r = subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", "-e", str(root)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]

    listed = subprocess.run([str(bin_ / "lowdim-bench"), "list", "plugins"], capture_output=True, text=True, env=env)
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("fresh-adapter"))
    assert " ok " in line and "lowdim-bench-fresh-adapter 0.1.0" in line and "method:fresh-adapter" in line

    tests = subprocess.run([str(bin_ / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root,
                           capture_output=True, text=True, env=env, timeout=600)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "12 passed" in tests.stdout  # one per kit check + the entry-point test

    out = tmp_path / "reports"
    run = subprocess.run([str(bin_ / "lowdim-bench"), "run", "fresh-adapter-smoke", "--methods", "fresh-adapter", "--out", str(out), "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    df = pl.read_parquet(next(out.glob("*/records.parquet")))
    mine = df.filter(pl.col("method") == "fresh-adapter")
    assert mine.height > 0 and set(mine["plugin"]) == {"lowdim-bench-fresh-adapter"}
    assert set(mine["plugin_version"]) == {"0.1.0"}
    assert "params_trainable" in set(mine["metric"]) and "flops_forward" in set(mine["metric"])


def test_hook_reference_in_docs_is_current():
    """docs/plugins.md's hook reference is what scripts/gen_hook_reference.py makes from the code."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gen_hook_reference.py"
    spec = importlib.util.spec_from_file_location("gen_hook_reference", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.DOC.read_text()
    assert gen.updated(text) == text, "docs/plugins.md is stale: run python scripts/gen_hook_reference.py"
    assert "#### `register_methods(" in text and "#### `suite_paths()" in text
