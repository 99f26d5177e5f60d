"""`lowdim-bench new-plugin NAME --kind adapt,task,metric`: a pip-installable plugin package that works at once.

One package holds every kind asked for, one module each (adapt.py, task.py, metric.py, ...),
registered by one entry-point module (plugin.py); one suite NAME-smoke runs them all beside the
dense reference; tests/ runs the conformance kit on each, using only the public API
(lowdim_bench.api, lowdim_bench.layers, lowdim_bench.testing and the CLI). Installed editable it
is listed by `lowdim-bench list`, runs `lowdim-bench run NAME-smoke`, and its tests pass.

Choices: the distribution is `lowdim-bench-NAME` unless `--dist` names another, the import
package `lowdim_bench_NAME`, the folder DIR/DIST; an existing non-empty folder is never
overwritten. Registered names: the task, metric and analysis are NAME; a single method is NAME,
several are NAME-KIND. The package's task (when there is one) is what its methods, metric and
analysis run on in the suite and the tests; else digits-mlp. `merge` needs a task family, which
no built-in task has, so it comes with `task` (the task then declares members).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Iterable

from ..suite_schema import HARNESS_KEYS
from . import adapt, analysis, compress, head, merge, metric, package, task, train

KINDS = ("adapt", "compress", "train", "head", "merge", "task", "metric", "analysis")
METHOD_KINDS = ("adapt", "compress", "train", "head", "merge")
TEMPLATES = {"adapt": adapt, "compress": compress, "train": train, "head": head, "merge": merge, "task": task,
             "metric": metric, "analysis": analysis}
DENSE_KIND = {"adapt": "adapt", "compress": "compress", "train": "train", "head": "adapt", "merge": "merge"}
HOOK = {"method": "methods", "task": "tasks", "metric": "metrics", "analysis": "analyses"}
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
DIST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508 names
DEFAULT_TASK = "digits-mlp"
BUDGET = 0.25  # one budget every kind reaches on the smoke tasks (train keeps its head dense)
MERGE_SCALING = 0.3  # a merge cell's budget is its knob: task arithmetic's lambda


class ScaffoldError(ValueError):
    """Bad name, kind, distribution or target folder; the message names the value."""


@dataclass
class Scaffold:
    """Where the package went and what it holds."""

    root: Path
    name: str
    dist: str
    module: str
    kinds: tuple[str, ...]
    files: list[Path]

    @property
    def kind(self) -> str:
        return ",".join(self.kinds)


def names(name: str, dist: str | None = None) -> dict[str, str]:
    if not NAME_RE.match(name or ""):
        raise ScaffoldError(f"plugin name {name!r}: use lowercase letters and digits, words joined by '-' "
                            "(e.g. 'my-lora'), starting with a letter")
    if dist is not None and not DIST_RE.match(dist):
        raise ScaffoldError(f"--dist {dist!r}: a distribution name is letters, digits, '.', '_' and '-', "
                            "starting and ending with a letter or digit")
    module = "lowdim_bench_" + name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-"))
    return {"name": name, "module": module, "cls": cls, "dist": dist or f"lowdim-bench-{name}",
            "table": name.replace("-", "_")}


def parse_kinds(kinds: str | Iterable[str]) -> tuple[str, ...]:
    """'adapt,task' or ["adapt", "task"] -> the kinds in KINDS order; errors name the bad value."""
    given = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds) if k.strip()]
    if not given:
        raise ScaffoldError(f"--kind: expected one or more of {', '.join(KINDS)}, comma-separated")
    for k in given:
        if k not in KINDS:
            raise ScaffoldError(f"--kind {k!r}: expected one or more of {', '.join(KINDS)}, comma-separated")
    if len(set(given)) != len(given):
        raise ScaffoldError(f"--kind {','.join(given)}: a kind is listed twice")
    if "merge" in given and "task" not in given:
        raise ScaffoldError("--kind merge: a merge runs on a task family (Task.members()), which no built-in task "
                            "has; use --kind merge,task and the package's task declares one")
    return tuple(k for k in KINDS if k in given)


def _registered(v: dict[str, str], kinds: tuple[str, ...]) -> dict[str, str]:
    """Kind -> the name it registers under (and the placeholders of its templates)."""
    methods = [k for k in kinds if k in METHOD_KINDS]
    out = {k: v["name"] if len(methods) == 1 else f"{v['name']}-{k}" for k in methods}
    out.update({k: v["name"] for k in kinds if k not in METHOD_KINDS})
    return out


def _plugin_module(v: dict[str, str], kinds: tuple[str, ...]) -> str:
    imports, calls = [], {}
    for k in kinds:
        cls = f"{v['cls']}{k.capitalize()}"
        imports.append(f"from .{k} import {cls}")
        calls.setdefault(HOOK["method" if k in METHOD_KINDS else k], []).append(f"    register({cls})")
    hooks = "\n\n\n".join(Template(package.HOOK).substitute(what=what, calls="\n".join(c)) for what, c in calls.items())
    return Template(package.PLUGIN).substitute(v, imports="\n".join(imports), hooks=hooks)


def _suite(v: dict[str, str], kinds: tuple[str, ...], reg: dict[str, str]) -> str:
    """NAME-smoke: every method of the package (or dense and LoRA when it has none) beside the dense
    reference on the package's task (or digits-mlp), with its metric and its analysis."""
    methods = [k for k in kinds if k in METHOD_KINDS]
    on = reg["task"] if "task" in kinds else DEFAULT_TASK
    measure = ["params", "flops"] + ([reg["metric"]] if "metric" in kinds else [])
    lines = [f"# What {v['name']} provides, beside the dense reference: `lowdim-bench run {v['name']}-smoke`.",
             f'name = "{v["name"]}-smoke"', 'version = "1"',
             f'description = "{v["name"]} ({", ".join(kinds)}) on {on}: one budget, one seed."',
             f"budgets = [{BUDGET}]", "seeds = [0]", f"measure = {_toml_list(measure)}", "timeout_s = 600",
             "# The entry ratios (and analyses) compare against; without it, the method marked as the",
             "# reference (dense) is used.", 'reference = "dense"']
    if "analysis" in kinds:
        lines += ["# Keep every cell's trained model (safetensors); the analysis needs them and would add this.",
                  'save = ["model"]']
    lines += ["", f"tasks = {_toml_list([on])}", ""]
    for k in methods:
        lines.append(f"[methods.{reg[k]}]")
        if k == "merge":
            lines.append(f"budgets = [{MERGE_SCALING}]  # a merge cell's budget is its knob (the scaling lambda)")
    if not methods:
        lines.append("[methods.lora]")
    dense = sorted({DENSE_KIND[k] for k in methods} or {"adapt"})
    lines += ["[methods.dense]", f"kinds = {_toml_list(dense)}"]
    if "analysis" in kinds:
        lines += ["", f"[{v['table']}]  # the analysis {reg['analysis']}'s table, checked before any cell runs",
                  "batch = 256", "min_agreement = 0.0"]
    return "\n".join(lines) + "\n"


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in values) + "]"


def render(kinds: str | Iterable[str], name: str, dist: str | None = None) -> dict[str, str]:
    """Relative path -> file text of a package holding these kinds."""
    kinds = parse_kinds(kinds)
    v = names(name, dist)
    if "analysis" in kinds and v["table"] in HARNESS_KEYS:
        raise ScaffoldError(f"plugin name {name!r}: the analysis's suite table [{v['table']}] would clash with the "
                            "suite field of that name; choose another name")
    reg = _registered(v, kinds)
    has_task = "task" in kinds
    mod, cls = v["module"], v["cls"]
    for_tests = {"task_import": f"from {mod}.task import {cls}Task\n" if has_task else "",
                 "task": f"{cls}Task()" if has_task else "None"}
    family = task.WITH_FAMILY if "merge" in kinds else task.NO_FAMILY
    provides = "\n".join(f"- {'method' if k in METHOD_KINDS else k} `{reg[k]}`" + (f" ({k})" if k in METHOD_KINDS else "")
                         for k in kinds)
    listed = [f"{'method' if k in METHOD_KINDS else k}:{reg[k]}" for k in kinds]
    listed_text = "".join(f"\n            {x!r}," for x in listed) + "\n    "
    common = {**v, "kinds": ", ".join(kinds), "provides": provides, "listed": listed_text}
    files = {
        "pyproject.toml": Template(package.PYPROJECT).substitute(common),
        "README.md": Template(package.README).substitute(common),
        f"{mod}/__init__.py": Template(package.INIT).substitute(common),
        f"{mod}/plugin.py": _plugin_module(v, kinds),
        f"{mod}/suites/{name}-smoke.toml": _suite(v, kinds, reg),
        "tests/test_plugin.py": Template(package.TEST_PLUGIN).substitute(common),
    }
    for k in kinds:
        each = {**v, **for_tests, **family, f"{'method' if k in METHOD_KINDS else k}_name": reg[k]}
        files[f"{mod}/{k}.py"] = Template(TEMPLATES[k].CODE).substitute(each)
        files[f"tests/test_{k}.py"] = Template(TEMPLATES[k].TEST).substitute(each)
    return files


def new_plugin(name: str, kinds: str | Iterable[str] = "adapt", directory: Path | str = ".",
               dist: str | None = None) -> Scaffold:
    """Write the package under directory/DIST and return where it went."""
    files = render(kinds, name, dist)
    v = names(name, dist)
    root = Path(directory) / v["dist"]
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root}: already exists and is not empty; choose another --dir, name or --dist")
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return Scaffold(root=root, name=name, dist=v["dist"], module=v["module"], kinds=parse_kinds(kinds), files=written)
