"""Fair comparisons: budgets matched from both sides, learning rates tuned alike (edge extension,
a diverging rate fails alone), the base's score before adapting, interleaved latency for every
method (AFM, which needs calibration, included) and the table that shows it."""
from __future__ import annotations

import copy
import math

import polars as pl
import pytest
import torch
from torch import nn

from lowdim_bench import report
from lowdim_bench.api import ApplyContext, Measurement, Method
from lowdim_bench.core import events as ev
from lowdim_bench.core.cells import Cell
from lowdim_bench.core.records import to_frame
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run import budget
from lowdim_bench.run.interleave import PHASE, Reached, time_group
from lowdim_bench.run.worker import execute
from lowdim_bench_builtin.methods import afm, dense, flora, lora
from lowdim_bench_builtin.methods.flora import FloraMethod
from lowdim_bench_builtin.methods.lora import LoraMethod
from lowdim_bench_builtin.tasks import digits_mlp

CPU = torch.device("cpu")


def ctx(seed: int = 0) -> ApplyContext:
    return ApplyContext(seed=seed, device=CPU, task=None)  # type: ignore[arg-type]


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 10))


@pytest.mark.parametrize("method", [FloraMethod(), LoraMethod()])
@pytest.mark.parametrize("target", [0.15, 0.34, 0.62])
def test_budget_match_is_the_closer_side_within_one_knob_step(method: Method, target: float) -> None:
    base = convnet()
    total = count_params(base).total
    frac = lambda k: count_params(method.apply(base, k, ctx())).trainable / total  # noqa: E731
    sized = budget.apply_sized(method, base, "adapt", target, None, total, ctx())
    k = int(sized.knob)
    lo, hi = (k, k + 1) if sized.fraction <= target else (k - 1, k)
    step = frac(hi) - frac(lo)
    assert frac(lo) <= target < frac(hi)
    assert sized.mismatch == pytest.approx(sized.fraction - target)
    assert abs(sized.mismatch) <= step / 2 < step  # below one knob step: the closer of the two
    assert abs(sized.mismatch) == pytest.approx(min(target - frac(lo), frac(hi) - target))


def test_flora_and_conv_lora_land_closer_than_one_step_apart() -> None:
    """The first wave compared FLoRA at 857 with conv-LoRA at 1,107 trainable (both rounded down)."""
    base = convnet()
    total = count_params(base).total
    got = {type(m).__name__: budget.apply_sized(m, base, "adapt", 0.15, None, total, ctx()) for m in
           (FloraMethod(), LoraMethod())}
    below = {name: budget.search(m, base, "adapt", 0.15, total, ctx()).fraction
             for name, m in (("FloraMethod", FloraMethod()), ("LoraMethod", LoraMethod()))}
    assert all(abs(s.mismatch) <= abs(below[n] - 0.15) for n, s in got.items())


# ---- the worker's learning-rate grid ------------------------------------------------------------
class DivergesAbove(Method):
    """Trains the head; its loss is NaN when the learning rate is above 0.05 (a rate that diverges)."""
    name = "lr-probe"
    kind = "adapt"

    def apply(self, model, size, ctx):
        m = copy.deepcopy(model)
        for p in m.parameters():
            p.requires_grad_(False)
        for p in m.head.parameters():
            p.requires_grad_(True)
        return m

    def configure_optimizer(self, model, lr, weight_decay):
        self.lr = lr
        return None

    def extra_loss(self, model):
        return torch.tensor(float("nan")) if self.lr > 0.05 else None


class _Probe:
    @hookimpl
    def register_methods(self, register):
        register(DivergesAbove)


def run_cell(method: str, kind: str, lr_grid: list[float], knob=None, **task_options) -> list[dict]:
    reg = Registry.from_objects({"digits": digits_mlp, "dense": dense, "probe": _Probe(), "afm": afm, "lora": lora})
    options = {"hidden": 16, "depth": 1, "steps": 20, "finetune_steps": 10, **task_options}
    cell = Cell(suite="t", suite_version="1", task="digits-mlp", task_options=options, method=method, hparams={},
                kind=kind, budget=None, knob=knob, seed=0, device="cpu", lr_grid=lr_grid, measure=[],
                protocol={})
    out: list = []
    execute(cell, "run", out.append, registry=reg)
    assert isinstance(out[-1], ev.CellDone), out[-1]
    return [r for e in out if isinstance(e, ev.RecordsReady) for r in e.records]


def values(recs: list[dict], metric: str) -> list[float]:
    return [r["value"] for r in recs if r["metric"] == metric]


@pytest.mark.slow  # trains a small MLP a few times in-process
def test_a_diverging_rate_fails_alone_and_an_edge_choice_extends_the_grid() -> None:
    recs = run_cell("lr-probe", "adapt", [0.01, 0.1])
    assert values(recs, "lr_failed") == [1.0]  # 0.1 went non-finite; the cell did not fail
    config = next(r["config"] for r in recs if r["metric"] == "lr_selected")
    assert '"extended": 0.001' in config  # 0.01 was the lowest surviving rate: one step further down
    assert values(recs, "lr_selected")[0] in (0.01, 0.001)
    assert values(recs, "lr_at_edge") == [float(values(recs, "lr_selected")[0] == 0.001)]
    # the base's own score on the target, before adapting
    (before,) = values(recs, "quality_before")
    assert 0.0 <= before <= 1.0


@pytest.mark.slow
def test_every_rate_diverging_fails_the_cell_with_each_reason() -> None:
    reg = Registry.from_objects({"digits": digits_mlp, "probe": _Probe()})
    cell = Cell(suite="t", suite_version="1", task="digits-mlp", task_options={"hidden": 8, "depth": 1, "steps": 5,
                "finetune_steps": 5}, method="lr-probe", hparams={}, kind="adapt", budget=None, knob=None, seed=0,
                device="cpu", lr_grid=[0.1, 0.3], measure=[], protocol={})
    out: list = []
    execute(cell, "run", out.append, registry=reg)
    assert isinstance(out[-1], ev.CellFailed) and "every learning rate of the grid failed" in out[-1].reason
    assert "lr=0.1" in out[-1].reason and "lr=0.3" in out[-1].reason


# ---- the before-adaptation row and the table ------------------------------------------------------
def rows(method: str, seed: int, q: float, extra: dict | None = None) -> list[dict]:
    base = {"task": "t", "kind": "adapt", "method": method, "seed": seed, "status": "ok", "cell_key": f"{method}{seed}",
            "unit": "fraction", "higher_is_better": True, "knob": 2.0 if method != "dense" else None}
    out = [{**base, "metric": "quality", "value": q}, {**base, "metric": "quality_before", "value": 0.6 + seed / 100}]
    for (metric, bs), v in (extra or {}).items():
        out.append({**base, "metric": metric, "phase": PHASE, "batch_size": bs, "value": v})
    return out


def test_summary_has_a_before_adaptation_row_with_its_seeds() -> None:
    recs = rows("dense", 0, 0.9) + rows("dense", 1, 0.92) + rows("lora", 0, 0.8) + rows("lora", 1, 0.82)
    s = report.summary(to_frame(recs))
    before = s.filter(pl.col("method") == report.BEFORE).to_dicts()
    assert len(before) == 1 and before[0]["n_seeds"] == 2 and before[0]["quality"] == pytest.approx(0.605)
    assert "quality_before" not in s.columns


def test_table_shows_the_interleaved_p50_with_its_ratio_and_marks_noise() -> None:
    recs = rows("dense", 0, 0.9, {("latency_p50", 1): 2e-3, ("latency_ratio", 1): 1.0, ("latency_spread", 1): 1.1})
    recs += rows("lora", 0, 0.8, {("latency_p50", 1): 3e-3, ("latency_ratio", 1): 1.5, ("latency_spread", 1): 2.0})
    recs += [{**r, "phase": "inference", "metric": "latency_p50", "value": 9.0} for r in rows("lora", 0, 0.8)[:1]]
    s = report.summary(to_frame(recs))
    headers, body = report.table_rows(s)
    col = headers.index("bs1 ms (x ref)")
    by_method = {r[2]: r[col] for r in body}
    assert by_method["dense"] == "2 (1.00x)" and by_method["lora"] == "3 (1.50x)?"
    assert "bs1 ms/cell" not in headers  # the per-cell figure is left out when interleaved ones exist


# ---- interleaved latency for every method -------------------------------------------------------
@pytest.mark.slow  # trains a small digits base once, calibrates AFM, times both
def test_afm_gets_interleaved_latency_through_the_rebuild_with_calibration() -> None:
    reg = Registry.load()
    protocol = {"batch_sizes": [1, 8], "warmup": 1, "repeats": 6, "max_seconds": 0.0, "interleave": True}
    options = {"hidden": 16, "depth": 2, "steps": 5}

    def cell(method: str, knob=None) -> Cell:
        return Cell(suite="t", suite_version="1", task="digits-mlp", task_options=options, method=method, hparams={},
                    kind="compress", budget=None, knob=knob, seed=0, device="cpu", measure=["latency"],
                    protocol=protocol, reference=method == "dense")

    ref, comp = cell("dense"), cell("afm", 4)
    recs = time_group([ref, comp], {ref.key: Reached(None, 1.0), comp.key: Reached(4, 0.5)}, reg, CPU, "run")
    ratios = [r for r in recs if r["metric"] == "latency_ratio" and r["cell_key"] == comp.key]
    assert {r["batch_size"] for r in ratios} == {1, 8} and all(math.isfinite(r["value"]) for r in ratios)
    assert all(r["phase"] == PHASE and r["threads"] == torch.get_num_threads() for r in recs)
    assert all(r["seq_len"] is None for r in recs)


def test_measurement_fields_used_above_exist() -> None:
    assert {"batch_size", "seq_len", "phase"} <= set(Measurement.__dataclass_fields__)
