"""`lowdim-bench new-plugin NAME`: write a pip-installable plugin package that works at once.

The package has a pyproject with the `lowdim_bench` entry point, the plugin module (a small,
correct example of the kind, see scaffold_templates), a suite NAME-smoke the plugin provides,
a README, and tests that run the conformance kit. Installed editable it is listed by
`lowdim-bench list`, runs `lowdim-bench run NAME-smoke`, and its tests pass.

Choices: the distribution is `lowdim-bench-NAME`, the import package `lowdim_bench_NAME`, the
folder DIR/lowdim-bench-NAME; an existing non-empty folder is never overwritten. `merge` is
refused: the harness has no task that hands a method several fine-tuned models yet.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from . import scaffold_templates as t

KINDS = ("adapt", "compress", "train", "head", "task", "metric")
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
METHOD_TEMPLATES = {"adapt": t.ADAPT, "compress": t.COMPRESS, "train": t.TRAIN, "head": t.HEAD}
DENSE_KIND = {"adapt": "adapt", "compress": "compress", "train": "train", "head": "adapt"}


class ScaffoldError(ValueError):
    """Bad name, kind or target folder; the message names the value."""


@dataclass
class Scaffold:
    """Where the package went and what it is called."""

    root: Path
    name: str
    dist: str
    module: str
    kind: str
    files: list[Path]


def names(name: str) -> dict[str, str]:
    if not NAME_RE.match(name or ""):
        raise ScaffoldError(f"plugin name {name!r}: use lowercase letters and digits, words joined by '-' "
                            "(e.g. 'my-lora'), starting with a letter")
    module = "lowdim_bench_" + name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-"))
    return {"name": name, "module": module, "cls": cls, "dist": f"lowdim-bench-{name}"}


def render(kind: str, name: str) -> dict[str, str]:
    """Relative path -> file text for a plugin of this kind."""
    if kind == "merge":
        raise ScaffoldError("--kind merge: the harness has no task that provides several fine-tuned models yet, "
                            "so a merge plugin could not run; scaffold an adapt method instead")
    if kind not in KINDS:
        raise ScaffoldError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    v = {**names(name), "kind": kind, "dense_kind": DENSE_KIND.get(kind, "adapt")}
    if kind in METHOD_TEMPLATES:
        plugin, suite, test = METHOD_TEMPLATES[kind], t.SUITE_METHOD, t.TEST_METHOD
    elif kind == "task":
        plugin, suite, test = t.TASK, t.SUITE_TASK, t.TEST_TASK
    else:
        plugin, suite, test = t.METRIC, t.SUITE_METRIC, t.TEST_METRIC
    mod = v["module"]
    files = {
        "pyproject.toml": t.PYPROJECT,
        "README.md": t.README,
        f"{mod}/__init__.py": t.INIT,
        f"{mod}/plugin.py": plugin + t.SUITE_HOOK,
        f"{mod}/suites/{name}-smoke.toml": suite,
        f"tests/test_{mod}.py": test,
    }
    return {path: Template(text).substitute(v) for path, text in files.items()}


def new_plugin(name: str, kind: str = "adapt", directory: Path | str = ".") -> Scaffold:
    """Write the package under directory/lowdim-bench-NAME and return where it went."""
    files = render(kind, name)
    v = names(name)
    root = Path(directory) / v["dist"]
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root}: already exists and is not empty; choose another --dir or name")
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return Scaffold(root=root, name=name, dist=v["dist"], module=v["module"], kind=kind, files=written)
