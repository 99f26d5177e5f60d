"""The `representations` analysis: how alike are the features of a run's trained models?

For each task, every saved model (`save = ["model"]`) sees one fixed probe set, drawn once from
the first cell's test split (`task.batches` with a generator seeded 0, `task.model_inputs`) and
given unchanged to every model, so all differences are the models'. At each hook point, for
every pair of models: linear CKA, debiased CKA, SVCCA and the convergent-learning neuron
matching (one-to-one bipartite and semi-matching mean correlation; the Lasso one-to-many
prediction with `sparse_prediction = true`).

Hook points: the *input* of every Linear / Conv2d of the task's architecture (the representation
that layer reads, post-activation as in the convergent-learning paper), named "<layer>.in", read
through the module at that name in each model (a method's wrapper sits there). Points that read
the same tensor in one model (wq, wk, wv) are kept once, and a point where every model sees the
same values (the input data) is dropped. Rows: a (n, d) input is n rows; tokens (b, t, d) are
b t rows; conv maps (n, C, H, W) are n rows of C H W for CKA and SVCCA, and n H W rows of C units
for neuron matching. At most `max_rows` rows, evenly spaced, the same for every model.

Records: per task, point and pair of method entries, the mean over pairs of cells: across
distinct seeds within one entry (the seed-to-seed baseline), at the same seed across entries
(the same base model for adapt cells). The table (representations.csv) has every pair of cells.
"""
from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from torch import nn

from lowdim_bench.api import (Analysis, AnalysisContext, AnalysisRecord, AnalysisResult, ArtefactInfo, ConfigError,
                              Inputs, SuiteView)
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.layers import find_layers

from ._similarity import (debiased_cka, linear_cka, match_neurons, mean_canonical_correlation, sparse_prediction,
                          svcca_basis)

MEASURES = ("linear_cka", "debiased_cka", "svcca", "match_corr", "semi_corr")
OPTIONS: dict[str, Any] = {"probe": 256, "max_rows": 2048, "layers": "auto", "sparse_prediction": False,
                           "sparse_alpha": 0.05, "tasks": []}


def _label(info: ArtefactInfo) -> str:
    return f"{info.method}@{info.size}#s{info.seed}"


@dataclass
class Point:
    """Features of one model at one hook point: `flat` (rows, dims) for CKA/SVCCA, `units` (rows, C)."""

    flat: torch.Tensor
    units: torch.Tensor

    @functools.cached_property
    def basis(self) -> torch.Tensor:
        """SVCCA's reduced basis, once per model and point (each takes part in many pairs)."""
        return svcca_basis(self.flat)


def _rows(n: int, cap: int) -> torch.Tensor:
    return torch.arange(n) if n <= cap else torch.linspace(0, n - 1, cap).round().long()


def _as_point(t: torch.Tensor, cap: int) -> Point:
    t = t.detach().float().cpu()
    if t.dim() == 4:  # (n, C, H, W)
        flat = t.flatten(1)
        units = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
        return Point(flat[_rows(len(flat), cap)], units[_rows(len(units), cap)])
    flat = t.reshape(-1, t.shape[-1]) if t.dim() >= 2 else t.reshape(-1, 1)
    flat = flat[_rows(len(flat), cap)]
    return Point(flat, flat)


def hook_points(model: nn.Module, names: list[str], inputs: Inputs, cap: int) -> dict[str, Point]:
    """Inputs of the named modules during one forward (the first call of each); a point whose
    values equal an earlier point's (wk and wv read what wq reads) is kept once, under the first name."""
    grabbed: dict[str, Point] = {}
    modules = dict(model.named_modules())
    handles = []

    def hook(name: str):
        def grab(_m: nn.Module, args: tuple) -> None:
            if name not in grabbed and args and isinstance(args[0], torch.Tensor):
                grabbed[name] = _as_point(args[0], cap)
        return grab

    for name in names:
        if name in modules:
            handles.append(modules[name].register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            inputs.call(model.eval())
    finally:
        for h in handles:
            h.remove()
    kept: dict[str, Point] = {}
    for name in names:
        p = grabbed.get(name)
        if p is not None and not any(q.flat.shape == p.flat.shape and torch.equal(q.flat, p.flat)
                                     for q in kept.values()):
            kept[name] = p
    return kept


def pair_measures(a: Point, b: Point, options: dict[str, Any]) -> dict[str, float]:
    out = {"linear_cka": linear_cka(a.flat, b.flat), "debiased_cka": debiased_cka(a.flat, b.flat),
           "svcca": mean_canonical_correlation(a.basis, b.basis)}
    if a.units.shape[1] == b.units.shape[1]:
        m = match_neurons(a.units, b.units)
        out.update(match_corr=m.mean_matched, semi_corr=m.mean_semi)
    if options["sparse_prediction"]:
        sp = sparse_prediction(a.units, b.units, options["sparse_alpha"])
        out.update(sparse_r2=sp.r2, sparse_connections=sp.connections)
    return out


class RepresentationsAnalysis(Analysis):
    name = "representations"
    table = "representations"
    needs = ("model",)
    description = ("Pairwise linear/debiased CKA, SVCCA and neuron matching of the saved models' layer inputs on "
                   "one fixed probe set per task (seeds and methods).")

    def validate(self, raw: Any, suite: SuiteView) -> dict[str, Any]:
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"[representations] must be a table, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown}; known: {sorted(OPTIONS)}", key=unknown[0])
        out = {**OPTIONS, **raw}
        for key in ("probe", "max_rows"):
            v = out[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 8:
                raise ConfigError(f"{key} must be an integer >= 8, got {v!r}", key=key)
        layers = out["layers"]
        if layers != "auto" and not (isinstance(layers, list) and layers and all(isinstance(s, str) for s in layers)):
            raise ConfigError(f"layers must be \"auto\" or a list of module-name suffixes, got {layers!r}",
                              key="layers")
        if not isinstance(out["sparse_prediction"], bool):
            raise ConfigError(f"sparse_prediction must be true or false, got {out['sparse_prediction']!r}",
                              key="sparse_prediction")
        alpha = out["sparse_alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ConfigError(f"sparse_alpha must be a number > 0, got {alpha!r}", key="sparse_alpha")
        tasks = out["tasks"]
        if not isinstance(tasks, list) or any(t not in suite.tasks for t in tasks):
            raise ConfigError(f"tasks must list tasks of the suite {list(suite.tasks)}, got {tasks!r}", key="tasks")
        out["sparse_alpha"] = float(alpha)
        return out

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        options = {**OPTIONS, **(ctx.options or {})}
        by_task: dict[str, list[ArtefactInfo]] = defaultdict(list)
        for info in ctx.artefacts.list("model"):
            if not options["tasks"] or info.task in options["tasks"]:
                by_task[info.task].append(info)
        rows: list[dict[str, Any]] = []
        for task_name in sorted(by_task):
            cells = sorted(by_task[task_name], key=lambda i: (i.method, i.size, i.seed, i.cell_key))
            if len(cells) >= 2:
                rows += self._task_rows(ctx, task_name, cells, options)
        table = pl.DataFrame(rows) if rows else None
        records = self._records(rows)
        return AnalysisResult(table=table, markdown=self._markdown(rows, ctx.suite.reference), records=records)

    def _task_rows(self, ctx: AnalysisContext, task_name: str, cells: list[ArtefactInfo],
                   options: dict[str, Any]) -> list[dict[str, Any]]:
        first = cells[0].cell_key
        task = ctx.artefacts.task(first)
        gen = torch.Generator().manual_seed(0)
        batch = next(iter(task.batches(ctx.artefacts.splits(first)["test"], options["probe"], gen)))
        inputs = Inputs.of(task.model_inputs(batch))
        names = [n for n, _ in find_layers(task.make_model(cells[0].seed), (nn.Linear, nn.Conv2d))]
        if options["layers"] != "auto":
            names = [n for n in names if any(n == s or n.endswith("." + s) for s in options["layers"])]
        feats = {}
        for c in cells:
            model = ctx.artefacts.load_model(c.cell_key)
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            feats[c.cell_key] = hook_points(model, names, task.to_device(inputs, device), options["max_rows"])
        points = [n for n in names if all(n in f for f in feats.values())]
        keys = [c.cell_key for c in cells]
        points = [n for n in points  # the data itself (same for every model) says nothing
                  if not all(torch.equal(feats[k][n].flat, feats[keys[0]][n].flat) for k in keys[1:])]
        rows = []
        for a, b in itertools.combinations(cells, 2):
            for point in points:
                m = pair_measures(feats[a.cell_key][point], feats[b.cell_key][point], options)
                rows.append({"task": task_name, "point": f"{point}.in", "a": _label(a), "b": _label(b),
                             "a_method": a.method, "b_method": b.method, "a_seed": a.seed, "b_seed": b.seed,
                             "a_size": a.size, "b_size": b.size,
                             "rows": int(feats[a.cell_key][point].flat.shape[0]), **m})
        return rows

    @staticmethod
    def _pairs(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], list[dict[str, Any]]]:
        """Rows grouped by (task, point, entry A, entry B): distinct seeds within an entry, the
        same seed across entries."""
        groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            ma, mb = f"{r['a_method']}@{r['a_size']}", f"{r['b_method']}@{r['b_size']}"
            if (ma == mb) != (r["a_seed"] != r["b_seed"]):
                continue
            ma, mb = sorted((ma, mb))
            groups[(r["task"], r["point"], ma, mb)].append(r)
        return groups

    def _records(self, rows: list[dict[str, Any]]) -> list[AnalysisRecord]:
        out = []
        for (task, point, ma, mb), group in sorted(self._pairs(rows).items()):
            for measure in MEASURES + ("sparse_r2", "sparse_connections"):
                vals = [r[measure] for r in group if measure in r]
                if vals:
                    unit = "units" if measure == "sparse_connections" else "fraction"
                    out.append(AnalysisRecord(metric=f"{measure}.{point}", value=sum(vals) / len(vals),
                                              unit=unit, task=task, phase=f"{ma} | {mb}", higher_is_better=None))
        return out

    def _markdown(self, rows: list[dict[str, Any]], reference: str | None) -> str:
        if not rows:
            return "## Representations\n\nFewer than two saved models per task: nothing to compare.\n"
        lines = ["## Representations", "",
                 "Linear CKA (mean over pairs: distinct seeds on the diagonal, same seed off it) on one fixed "
                 "probe set per task; representations.csv has every pair, debiased CKA, SVCCA and neuron matching.", ""]
        pairs = self._pairs(rows)
        for task in sorted({r["task"] for r in rows}):
            task_points = [r["point"] for r in rows if r["task"] == task]
            entries = sorted({e for (t, _, a, b) in pairs if t == task for e in (a, b)})
            points = list(dict.fromkeys(task_points))
            lines += [f"### {task}", "", "| point | " + " | ".join(f"{a} ~ {b}" for a, b in
                                                                   self._columns(entries, reference)) + " |",
                      "|---" * (1 + len(self._columns(entries, reference))) + "|"]
            for point in points:
                cells = []
                for a, b in self._columns(entries, reference):
                    group = pairs.get((task, point, *sorted((a, b))), [])
                    cells.append(f"{sum(r['linear_cka'] for r in group) / len(group):.3f}" if group else "-")
                lines.append(f"| {point} | " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _columns(entries: list[str], reference: str | None) -> list[tuple[str, str]]:
        """Each entry with itself (seed to seed), then with the reference entry when there is one."""
        ref = next((e for e in entries if reference and e.split("@")[0] == reference), None)
        cols = [(e, e) for e in entries]
        if ref is not None:
            cols += [(e, ref) for e in entries if e != ref]
        return cols


@hookimpl
def register_analyses(register) -> None:
    register(RepresentationsAnalysis)
