"""A plugin installed from a separate directory through the entry-point group: listed, run in
a suite, its records naming its distribution and version; a broken one is listed while the run
goes on."""
import subprocess
import sys
import textwrap

import polars as pl
import pytest

pytestmark = pytest.mark.slow

PLUGIN = '''
import copy
from lowdim_bench.api import Method
from lowdim_bench.hookspecs import hookimpl


class LastLayer(Method):
    """Fine-tunes only the output layer (a 'head-only' baseline)."""
    name = "last-layer"
    kind = "adapt"
    description = "Fine-tune only the output layer."

    def apply(self, model, size, ctx):
        m = copy.deepcopy(model)
        for p in m.parameters():
            p.requires_grad_(False)
        for p in m.head.parameters():
            p.requires_grad_(True)
        return m


@hookimpl
def register_methods(register):
    register(LastLayer)
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "lowdim-bench-lastlayer"
version = "1.2.3"

[project.entry-points.lowdim_bench]
last-layer = "ldb_lastlayer"
broken = "ldb_broken"

[tool.setuptools]
py-modules = ["ldb_lastlayer", "ldb_broken"]
'''


def test_installed_plugin_lists_runs_and_is_named_in_records(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "ldb_lastlayer.py").write_text(PLUGIN)
    (src / "ldb_broken.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(src)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    cli = [sys.executable, "-m", "lowdim_bench.cli"]

    out = subprocess.run(cli + ["list", "plugins"], capture_output=True, text=True, env=env).stdout
    assert "lowdim-bench-lastlayer 1.2.3" in out and "method:last-layer" in out
    assert "broken" in out and "broken on purpose" in out

    suite = tmp_path / "s.toml"
    suite.write_text(textwrap.dedent('''
        name = "third-party"
        seeds = [0]
        measure = ["params"]
        [tasks.digits-mlp]
        [tasks.digits-mlp.recipe]
        steps = 30
        [methods.last-layer]
        [methods.dense]
        kinds = ["adapt"]
    '''))
    r = subprocess.run(cli + ["run", str(suite), "--out", str(tmp_path / "reports"), "--device", "cpu"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    df = pl.read_parquet(next((tmp_path / "reports").glob("*/records.parquet")))
    mine = df.filter(pl.col("method") == "last-layer")
    assert set(mine["plugin"]) == {"lowdim-bench-lastlayer"} and set(mine["plugin_version"]) == {"1.2.3"}
    assert set(df.filter(pl.col("method") == "dense")["plugin"]) == {"lowdim-bench"}

    env["LOWDIM_BENCH_PLUGINS"] = ""
    out = subprocess.run(cli + ["list", "plugins"], capture_output=True, text=True, env=env).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("last-layer"))
    assert "skipped" in line
