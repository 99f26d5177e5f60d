"""The files every scaffolded package has, whatever kinds it holds (string.Template text).

Placeholders: $name (the plugin), $dist (the distribution), $module (the import package),
$kinds (comma-separated), $provides (a README list), $imports and $hooks (the plugin module's
body, built in scaffold/__init__.py), $listed (what `lowdim-bench list plugins` must show).
"""
from __future__ import annotations

PYPROJECT = '''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "lowdim-bench plugin $name: $kinds"
requires-python = ">=3.10"
dependencies = ["lowdim-bench>=0.1"]

[project.optional-dependencies]
test = ["pytest>=8"]

# The entry point is how lowdim-bench finds the plugin (group `lowdim_bench`): one module whose
# hooks register everything this package provides.
[project.entry-points.lowdim_bench]
$name = "$module.plugin"

[tool.setuptools]
packages = ["$module"]

[tool.setuptools.package-data]
$module = ["suites/*.toml"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

README = '''# $dist

A lowdim-bench plugin providing:

$provides

```sh
pip install -e .                 # into the environment that has lowdim-bench
lowdim-bench list plugins        # $name is listed, status ok
lowdim-bench list methods -v     # typed settings of every method (tasks: list tasks -v)
lowdim-bench run $name-smoke     # the suite this plugin ships ($module/suites/)
python -m pytest -q              # the conformance kit's checks (lowdim_bench.testing)
```

Each kind lives in its own module of `$module/` and `plugin.py` registers them all. Edit them;
keep `tests/` passing. Bump the version in pyproject.toml whenever results can change (records
and cache keys carry it, with a hash of every module of this package). The authoring guide is
docs/plugins.md in lowdim-bench: the public API (lowdim_bench.api, lowdim_bench.layers,
lowdim_bench.testing), the hooks, the conformance checks and the record schema.
'''

INIT = '''"""lowdim-bench plugin $name: one module per kind, registered by the entry point (plugin.py)."""
'''

PLUGIN = '''"""The entry point of $name: each hook registers what one module of this package defines."""
from __future__ import annotations

from pathlib import Path

from lowdim_bench.hookspecs import hookimpl

$imports


$hooks


@hookimpl
def suite_paths() -> list[str]:
    """The suites this plugin ships ($name-smoke)."""
    return [str(Path(__file__).parent / "suites")]
'''

HOOK = '''@hookimpl
def register_$what(register) -> None:
$calls'''

TEST_PLUGIN = '''"""The package is installed and registered through its entry point, as `lowdim-bench` sees it
(the CLI in a subprocess: the registry is not public API)."""
import subprocess
import sys


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "lowdim_bench.cli", *args], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_registered_through_the_entry_point():
    line = next(ln for ln in cli("list", "plugins").splitlines() if ln.split()[:1] == ["$name"])
    assert " ok " in line and "$dist 0.1.0" in line
    for provided in ($listed):
        assert provided in line, provided


def test_ships_its_smoke_suite():
    assert any(ln.split()[:1] == ["$name-smoke"] for ln in cli("list", "suites").splitlines())
'''
