"""Merge methods: the papers' formulas pinned on small cases, data discipline, conformance."""
from __future__ import annotations

import copy
from importlib import metadata

import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.testing import check_method
from lowdim_bench_builtin.methods import _merge_ops as ops
from lowdim_bench_builtin.methods.merging import (AdaMerging, ConcreteAdaMerging, ConcreteTA, Individual, TaskArithmetic,
                                                  Ties)
from lowdim_bench_builtin.tasks.families import DigitsMlpFamily
from lowdim_bench_builtin.tasks.digits_mlp import DigitsSplit

CPU = torch.device("cpu")
FAST = {"steps": 4, "batch_size": 8}
FAST_CONCRETE = {**FAST, "mask_steps": 3}


class Tripwire:
    """A test split that raises on any use until its task releases the test data."""

    def __init__(self, split: DigitsSplit, task: "GuardedFamily") -> None:
        object.__setattr__(self, "_split", split)
        object.__setattr__(self, "_task", task)

    def _check(self, what: str) -> None:
        if not object.__getattribute__(self, "_task").released:
            raise AssertionError(f"the test split was read ({what}) before the final score")

    def __getattr__(self, name):
        self._check(name)
        return getattr(object.__getattribute__(self, "_split"), name)

    def __len__(self) -> int:
        self._check("len")
        return len(object.__getattribute__(self, "_split"))


class GuardedFamily(DigitsMlpFamily):
    """digits-mlp-family whose member test splits are tripwires, and which counts val reads."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.released = False
        self.handed_out = 0
        self.val_reads = 0

    def splits(self, stage, seed):
        out = super().splits(stage, seed)
        if stage.startswith("member:"):
            self.handed_out += 1
            out["test"] = Tripwire(out["test"], self)
        return out

    def evaluate(self, model, split):
        if isinstance(split, DigitsSplit):
            self.val_reads += 1
        return super().evaluate(model, split)


def family(task=None, noise: float = 0.3, seed: int = 0):
    """A base and members that differ from it by seeded noise (cheap stand-ins for fine-tuning)."""
    task = task or DigitsMlpFamily(hidden=16)
    torch.manual_seed(seed)
    base = task.make_model(seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    members = {}
    for m in task.members():
        mod = copy.deepcopy(base)
        with torch.no_grad():
            for p in mod.body.parameters():
                p.add_(noise * torch.randn(p.shape, generator=gen) * p.abs().mean())
        members[m] = mod.eval()
    ctx = ApplyContext(seed=seed, device=CPU, task=task, kind="merge", members=members,
                       generator=torch.Generator().manual_seed(seed))
    return task, base, members, ctx


def body(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if n.startswith("body.")}


def test_methods_register_through_the_entry_point() -> None:
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="lowdim_bench")}
    assert eps["merging"] == "lowdim_bench_builtin.methods.merging"
    assert eps["merge-metrics"] == "lowdim_bench_builtin.metrics.merging"


def test_task_arithmetic_lambda_one_single_member_is_that_member() -> None:
    task, base, members, ctx = family(DigitsMlpFamily(hidden=16, members=["transpose", "rot90"]))
    ctx.members = {"transpose": members["transpose"]}
    merged = TaskArithmetic(lam=1.0).apply(base, None, ctx)
    for n, p in body(merged).items():
        assert torch.equal(p, body(members["transpose"])[n]), n
    assert merged.merge_stats.lam == 1.0 and not any(p.requires_grad for p in merged.parameters())


def test_task_arithmetic_is_base_plus_lambda_times_the_sum() -> None:
    task, base, members, ctx = family()
    merged = TaskArithmetic(lam=0.3).apply(base, None, ctx)
    for n, p in body(merged).items():
        want = body(base)[n] + 0.3 * sum(body(m)[n] - body(base)[n] for m in members.values())
        assert torch.allclose(p, want, atol=1e-6)
    assert torch.equal(merged.head.weight, base.head.weight)  # heads are the members', never merged


def test_ties_full_k_agreeing_signs_is_the_mean_task_vector() -> None:
    task, base, members, ctx = family()
    ref = members["transpose"]
    for m in members.values():  # every member moves each weight the same way, by different amounts
        with torch.no_grad():
            for (n, p), scale in zip(m.body.named_parameters(), (0.5, 1.0, 2.0, 3.0)):
                p.copy_(dict(base.body.named_parameters())[n] + scale * (dict(ref.body.named_parameters())[n]
                        - dict(base.body.named_parameters())[n]).abs())
    ties = Ties(lam=1.0).apply(base, 1.0, ctx)
    ta = TaskArithmetic(lam=1.0 / len(members)).apply(base, None, ctx)
    for n, p in body(ties).items():
        assert torch.allclose(p, body(ta)[n], atol=1e-6), n
    assert ties.merge_stats.retained == pytest.approx(1.0, abs=1e-3)


def test_ties_trim_elect_disjoint_mean_on_a_small_case() -> None:
    rows = torch.tensor([[3.0, -1.0, 0.5, 2.0], [-4.0, 2.0, 0.1, 1.0], [2.0, 3.0, -0.2, -0.1]])
    out = ops.ties_merge(rows, 0.5, "mean")
    # top 2 per row: [3, 2@3], [-4, 2@1], [2, 3@1]; masses: col0 1 -> +, col1 5 -> +, col3 2 -> +
    assert torch.allclose(out.merged, torch.tensor([2.5, 2.5, 0.0, 2.0]))
    assert torch.allclose(ops.ties_merge(rows, 0.5, "sum").merged, torch.tensor([5.0, 5.0, 0.0, 2.0]))
    assert ops.top_k_mask(rows, 0.5).sum(dim=1).tolist() == [2, 2, 2]
    assert ops.sign_conflict(rows) == pytest.approx(4 / 4)  # every column has both signs
    assert ops.sign_conflict(torch.ones(3, 5)) == 0.0


def test_concrete_mask_expected_density_matches_the_knob() -> None:
    like = {"a": torch.zeros(300, 20), "b": torch.zeros(50)}
    gen = torch.Generator().manual_seed(0)
    for density in (0.1, 0.3, 0.7):
        mask = ops.ConcreteMask(like, density, 0.5)
        assert mask.expected_density() == pytest.approx(density, abs=1e-6)
        with torch.no_grad():  # after logits move (as training moves them), the projection restores it
            mask.logits["a"].add_(torch.randn(300, 20, generator=gen) * 2)
        mask.project()
        assert mask.expected_density() == pytest.approx(density, abs=1e-4)
        kept = mask.final(gen, "discrete")
        frac = sum(float((t != 0).sum()) for t in kept.values()) / 6050
        assert frac == pytest.approx(density, abs=0.03)
        for t in kept.values():  # rescaled by the mean per tensor
            assert float(t.mean()) == pytest.approx(1.0, abs=1e-5)
        soft = mask.relaxed(gen)
        assert all(float(t.detach().mean()) == pytest.approx(1.0, abs=1e-4) for t in soft.values())


def test_concrete_ta_trains_the_mask_at_its_density() -> None:
    task, base, members, ctx = family()
    merged = ConcreteTA(lam=0.3, **FAST).apply(base, 0.4, ctx)
    st = merged.merge_stats
    assert st.mask_density == pytest.approx(0.4, abs=1e-4)
    assert st.retained == pytest.approx(0.4, abs=0.03)
    assert st.unlabeled_batches >= FAST["steps"] * len(members)
    assert st.seconds > 0 and st.state_bytes > 0


def test_concrete_at_density_one_is_task_arithmetic() -> None:
    task, base, members, ctx = family()
    a = ConcreteTA(lam=0.3, **FAST).apply(base, 1.0, ctx)
    b = TaskArithmetic(lam=0.3).apply(base, None, ctx)
    for n, p in body(a).items():
        assert torch.allclose(p, body(b)[n], atol=1e-6)


def test_adamerging_without_steps_is_task_arithmetic_at_its_init() -> None:
    task, base, members, ctx = family()
    a = AdaMerging(init=0.25, steps=0).apply(base, None, ctx)
    b = TaskArithmetic(lam=0.25).apply(base, None, ctx)
    for n, p in body(a).items():
        assert torch.allclose(p, body(b)[n], atol=1e-6)
    c = AdaMerging(init=0.25, steps=5, lr=0.05, batch_size=8).apply(base, None, ctx)
    assert any(not torch.allclose(p, body(b)[n]) for n, p in body(c).items())


@pytest.mark.parametrize("method,size", [(TaskArithmetic(), None), (Ties(), 0.3), (ConcreteTA(**FAST), 0.5),
                                         (AdaMerging(**FAST), None), (ConcreteAdaMerging(**FAST_CONCRETE), 0.5)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_lambda_and_entropy_never_read_test_data(method, size) -> None:
    task, base, members, ctx = family(GuardedFamily(hidden=16))
    merged = method.apply(base, size, ctx)
    assert task.handed_out, "the method never asked for the member splits"
    task.released = True  # only now: the final score is the first reader of test data
    scores = [task.evaluate(task.member_view(merged, m, members[m]), task.splits(f"member:{m}", 0)["test"])
              for m in members]
    assert all(0 <= s <= 1 for s in scores)
    assert task.val_reads > 0  # lambda (or AdaMerging's start) was chosen on validation instead


def test_lambda_is_chosen_on_validation() -> None:
    task, base, members, ctx = family(GuardedFamily(hidden=16), noise=1.0)
    grid = [0.0, 0.5, 1.0]
    st = TaskArithmetic(lam_grid=grid).apply(base, None, ctx).merge_stats
    assert st.val_passes == len(grid) * len(members) == task.val_reads
    mean_val = {}
    for lam in grid:  # recomputed independently: the chosen lambda is the best on validation
        merged = TaskArithmetic(lam=lam).apply(base, None, ctx)
        mean_val[lam] = sum(task.evaluate(task.member_view(merged, m, members[m]), task.splits(f"member:{m}", 0)["val"])
                            for m in members)
    assert st.lam == max(grid, key=lambda lam: (mean_val[lam], -lam))
    assert st.lam_at_grid_edge == (st.lam in (0.0, 1.0))


def test_merges_never_touch_base_or_members_and_are_deterministic() -> None:
    task, base, members, ctx = family()
    before = [copy.deepcopy(base.state_dict())] + [copy.deepcopy(m.state_dict()) for m in members.values()]
    a = ConcreteAdaMerging(**FAST_CONCRETE).apply(base, 0.5, ctx)
    torch.manual_seed(123)
    b = ConcreteAdaMerging(**FAST_CONCRETE).apply(base, 0.5, ctx)
    after = [base.state_dict()] + [m.state_dict() for m in members.values()]
    for x, y in zip(before, after):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_errors_name_the_problem() -> None:
    task, base, members, ctx = family()
    with pytest.raises(PluginError, match="no size knob"):
        TaskArithmetic().apply(base, 0.5, ctx)
    with pytest.raises(PluginError, match=r"fraction in \(0, 1\]"):
        Ties().apply(base, 1.5, ctx)
    with pytest.raises(PluginError, match="merge cells"):
        TaskArithmetic().apply(base, None, ApplyContext(seed=0, device=CPU, task=task))
    with pytest.raises(PluginError, match="adapt_split = .test. is not a valid"):
        ConcreteTA(adapt_split="test")


def test_individual_reference_scores_each_member_alone() -> None:
    task, base, members, ctx = family()
    kept = Individual().apply(base, None, ctx)
    for m, mod in members.items():
        assert torch.equal(task.member_view(kept, m, mod)(torch.ones(2, 64)), mod(torch.ones(2, 64)))
    with pytest.raises(PluginError, match="no single forward"):
        kept(torch.ones(2, 64))


# `individual` is left out: a reference row with no single forward (so no FLOPs, latency or inference
# form to check); test_individual_reference_scores_each_member_alone pins what it does.
@pytest.mark.slow
@pytest.mark.parametrize("method,hp", [("task-arithmetic", {}), ("ties", {}), ("concrete-ta", FAST),
                                       ("adamerging", FAST), ("concrete-adamerging", FAST_CONCRETE),
                                       ("dense", {})])
def test_merge_methods_pass_the_kit(method, hp) -> None:
    from lowdim_bench.registry import Registry

    cls = Registry.load().method(method).cls
    results = check_method(cls, DigitsMlpFamily(hidden=16), kind="merge", **hp)
    failures = [str(r) for r in results if r.failed]
    assert not failures, "\n".join(failures)
    assert {r.check for r in results if r.passed} >= {"declaration", "base_untouched", "deterministic", "smoke_run"}


def _measure_ctx(task, base, members, model):
    from lowdim_bench.api import MeasureContext

    return MeasureContext(task=task, method=TaskArithmetic(), model=model, inference_model=model, kind="merge",
                          device=CPU, protocol={}, make_optimizer=lambda m: None, dense_params=0, base_model=base,
                          members=members, extras={"seed": 0})


def test_merge_cost_records_what_the_method_measured() -> None:
    from lowdim_bench_builtin.metrics.merging import MergeCost

    task, base, members, ctx = family()
    merged = Ties(lam=0.5).apply(base, 0.3, ctx)
    got = {m.metric: m for m in MergeCost().measure(_measure_ctx(task, base, members, merged))}
    assert got["merge_seconds"].value == merged.merge_stats.seconds > 0 and got["merge_seconds"].unit == "s"
    assert got["merge_lambda"].value == 0.5 and got["merge_retained"].value == merged.merge_stats.retained < 0.3
    n = sum(p.numel() for n_, p in base.named_parameters() if n_.startswith("body."))
    assert got["merge_state_bytes"].value >= 4 * len(members) * n  # the task vectors at least
    dense = {m.metric: m.value for m in MergeCost().measure(_measure_ctx(task, base, members, copy.deepcopy(base)))}
    assert dense == {"merge_retained": 0.0}


def test_merge_quality_normalises_by_each_member() -> None:
    from lowdim_bench_builtin.metrics.merging import MergeQuality

    task, base, members, ctx = family(noise=1.0)
    kept = MergeQuality().measure(_measure_ctx(task, base, members, Individual().apply(base, None, ctx)))
    assert [m.value for m in kept if m.metric == "quality_normalised"] == [1.0] * (len(members) + 1)
    merged = TaskArithmetic(lam=0.3).apply(base, None, ctx)
    out = MergeQuality().measure(_measure_ctx(task, base, members, merged))
    per = {m.phase: m.value for m in out if m.metric == "quality_normalised"}
    for m in members:
        test = task.splits(f"member:{m}", 0)["test"]
        want = task.evaluate(task.member_view(merged, m, members[m]), test) / task.evaluate(members[m], test)
        assert per[m] == pytest.approx(want)
    assert per[None] == pytest.approx(sum(per[m] for m in members) / len(members))
    conflict = {m.metric: m.value for m in out if m.metric.startswith("sign_conflict")}
    assert 0.5 < conflict["sign_conflict"] <= 1.0  # four independent noise vectors disagree almost everywhere


@pytest.mark.slow
def test_merge_metrics_pass_the_kit() -> None:
    from lowdim_bench.testing import check_metric
    from lowdim_bench_builtin.metrics.merging import MergeCost, MergeQuality

    task, base, members, ctx = family()
    merged = Ties(lam=0.5).apply(base, 0.3, ctx)
    for metric in (MergeCost, MergeQuality):  # they speak on merge cells only: the kit gets one
        failures = [str(r) for r in check_metric(metric, ctx=_measure_ctx(task, base, members, merged)) if r.failed]
        assert not failures, "\n".join(failures)
