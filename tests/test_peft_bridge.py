"""The PEFT bridge: our `lora` and PEFT's LoRA agree (counts, init, outputs for equal factors);
the other PEFT tuners apply cleanly; the plugin registers nothing when peft is absent.

Tests that need peft take the `peft` fixture (pytest.importorskip), so they skip without the extra.
"""
from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from lowdim_bench.api import PluginError
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run.budget import apply_sized
from lowdim_bench_builtin.methods import peft_bridge
from lowdim_bench_builtin.methods.lora import LoraLayer, LoraMethod, merge_lora
from lowdim_bench_builtin.methods.peft_bridge import PeftLokr, PeftLora, PeftLoha, PeftVera
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
from method_helpers import ctx


@pytest.fixture
def peft():
    return pytest.importorskip("peft")


def digits_mlp() -> nn.Module:
    return DigitsTask(hidden=32).make_model(0)


class SmallCNN(nn.Module):
    """Two convs (one strided, one padded) and two Linears: every form our lora and PEFT share."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.relu(self.fc(h.flatten(1))))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN()


MODELS = {"digits-mlp": (digits_mlp, lambda: torch.rand(5, 64, generator=torch.Generator().manual_seed(3))),
          "cnn": (small_cnn, lambda: torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3)))}


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    """PEFT's LoRA layers by the name of the base module they wrap."""
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    base = model.get_base_model()
    return {n: m for n, m in base.named_modules() if isinstance(m, PeftLoraLayer)}


def set_equal_factors(ours: nn.Module, theirs: nn.Module, seed: int = 7) -> int:
    """Give each pair of layers the same random A and B (B non-zero); returns how many pairs."""
    g = torch.Generator().manual_seed(seed)
    mine = {n: m for n, m in ours.named_modules() if isinstance(m, LoraLayer)}
    other = peft_layers(theirs)
    assert sorted(mine) == sorted(other)
    with torch.no_grad():
        for name, layer in mine.items():
            a = 0.3 * torch.randn(layer.lora_A.weight.shape, generator=g)
            b = 0.3 * torch.randn(layer.lora_B.weight.shape, generator=g)
            layer.lora_A.weight.copy_(a)
            layer.lora_B.weight.copy_(b)
            other[name].lora_A["default"].weight.copy_(a)
            other[name].lora_B["default"].weight.copy_(b)
    return len(mine)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("rank,alpha", [(2, 8.0), (3, 16.0)])
def test_our_lora_and_peft_lora_agree(peft, model_name: str, rank: int, alpha: float) -> None:
    make, inputs = MODELS[model_name]
    base = make()
    before = copy.deepcopy(base.state_dict())
    x = inputs()
    with torch.no_grad():
        y_base = base(x)
    ours = LoraMethod(alpha=alpha).apply(base, rank, ctx())
    theirs = PeftLora(alpha=alpha).apply(base, rank, ctx())
    # same trainable count, and both the formula r (d_in + d_out) / r (C_in k k + C_out)
    formula = 0
    for m in base.modules():
        if isinstance(m, nn.Linear):
            formula += rank * (m.in_features + m.out_features)
        elif isinstance(m, nn.Conv2d):
            formula += rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
    assert trainable(ours) == trainable(theirs) == formula
    assert count_params(ours).total == count_params(theirs).total
    # identity at init: both equal the base
    with torch.no_grad():
        assert torch.equal(ours(x), y_base) and torch.equal(theirs(x), y_base)
    # equal factors -> equal outputs: pins alpha/r scaling and the conv form
    n = set_equal_factors(ours, theirs)
    assert n == sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in base.modules())
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert not torch.allclose(a, y_base, atol=1e-3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # merged forms agree too, and PEFT's merge_and_unload gives a plain module
    merged = PeftLora(alpha=alpha, merged_inference=True).for_inference(copy.deepcopy(theirs))
    assert not isinstance(merged, peft.PeftModel)
    merge_lora(ours)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), merged(x), rtol=1e-5, atol=1e-5)
    # the caller's base model is untouched, weights and flags
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in base.parameters())


def test_peft_init_is_seeded_and_leaves_global_rng_alone(peft) -> None:
    base = digits_mlp()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = PeftLora().apply(base, 2, ctx(seed=5))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = PeftLora().apply(base, 2, ctx(seed=5))
    c = PeftLora().apply(base, 2, ctx(seed=6))
    wa, wb, wc = (peft_layers(m)["body.0"].lora_A["default"].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_only_selected_modules_are_adapted(peft) -> None:
    base = small_cnn()
    theirs = PeftLora(target_modules=["fc"]).apply(base, 2, ctx())
    assert sorted(peft_layers(theirs)) == ["fc"]
    assert trainable(theirs) == 2 * (128 + 24)
    with pytest.raises(PluginError, match="fcx"):
        PeftLora(target_modules=["fcx"]).apply(base, 2, ctx())
    with pytest.raises(PluginError, match="target_modules"):
        PeftLora(target_modules="fc")
    with pytest.raises(PluginError, match="alpha"):
        PeftLora(alpha=0)
    with pytest.raises(PluginError, match="rank"):
        PeftLora().apply(base, 0, ctx())


@pytest.mark.parametrize("cls,per_linear,per_conv", [
    (PeftLoha, lambda r, i, o: 2 * r * (i + o), lambda r, i, k, o: 2 * r * (i * k + o)),
    (PeftVera, lambda r, i, o: r + o, None),
])
def test_other_tuners_count_to_their_formula(peft, cls, per_linear, per_conv) -> None:
    base = small_cnn()
    r = 3
    x = MODELS["cnn"][1]()
    new = cls().apply(base, r, ctx())
    expect = 0
    for m in base.modules():
        if isinstance(m, nn.Linear):
            expect += per_linear(r, m.in_features, m.out_features)
        elif isinstance(m, nn.Conv2d) and per_conv is not None:
            expect += per_conv(r, m.in_channels, m.kernel_size[0] * m.kernel_size[1], m.out_channels)
    assert trainable(new) == expect
    with torch.no_grad():
        assert torch.allclose(new(x), base(x), atol=1e-6)  # identity at init


def test_vera_stores_its_shared_projections(peft) -> None:
    base = small_cnn()
    new = PeftVera().apply(base, 4, ctx())
    c = count_params(new)
    # A (r, max d_in) and B (max d_out, r), shared by both Linears, stored but not trained
    assert c.stored - c.total == 4 * 128 + 24 * 4


def test_lokr_knob_range_keeps_the_count_monotone(peft) -> None:
    base = DigitsTask(hidden=64).make_model(0)
    method = PeftLokr()
    lo, hi = method.knob_range(base)
    counts = [trainable(method.apply(base, r, ctx())) for r in range(int(lo), int(hi) + 1)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert trainable(method.apply(base, hi + 1, ctx())) > counts[-1]  # the jump the range avoids


@pytest.mark.parametrize("cls,budget", [(PeftLora, 0.15), (PeftLoha, 0.15), (PeftLokr, 0.05), (PeftVera, 0.03)])
def test_budget_search_meets_the_budget(peft, cls, budget: float) -> None:
    base = digits_mlp()
    dense = count_params(base).total
    sized = apply_sized(cls(), base, "adapt", budget, None, dense, ctx())
    assert not sized.over_budget
    # the closer of the two knob values around the budget (harness rule: matched from both sides)
    lo, hi = sorted((sized.knob, sized.knob + 1 if sized.fraction <= budget else sized.knob - 1))
    f_lo, f_hi = (trainable(cls().apply(base, k, ctx())) / dense for k in (lo, hi))
    assert hi <= cls().knob_range(base)[1]  # an interior bracket, not the top of the range
    assert f_lo <= budget < f_hi and abs(sized.mismatch) == min(budget - f_lo, f_hi - budget)
    assert sized.fraction == trainable(sized.model) / dense


def test_trains_through_the_harness_loop(peft) -> None:
    """One real optimizer step changes only adapter weights; a deep copy still works."""
    base = digits_mlp()
    model = PeftLora().apply(base, 2, ctx())
    copy.deepcopy(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        assert not torch.equal(model(x), base(x))


def test_registers_the_tuners_when_peft_is_installed(peft) -> None:
    reg = Registry.from_objects({"peft": peft_bridge})
    assert {n for n in reg.methods} == {"peft-lora", "peft-loha", "peft-lokr", "peft-vera"}
    assert all(reg.method(n).cls.kind == "adapt" and reg.method(n).cls.knob.name == "rank" for n in reg.methods)


def test_without_peft_the_plugin_loads_and_registers_nothing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail, as when it is absent
    assert not peft_bridge.peft_available()
    reg = Registry.from_objects({"peft": peft_bridge})
    assert reg.methods == {} and reg.plugins["peft"].status == "ok" and reg.plugins["peft"].provides == []
    with pytest.raises(PluginError, match=r"lowdim-bench\[peft\]"):
        PeftLora().apply(digits_mlp(), 2, ctx())


def test_loading_the_plugin_does_not_import_peft() -> None:
    """`import peft` pulls in transformers (seconds); only a peft cell's apply may pay for it."""
    import subprocess

    code = ("import sys; from lowdim_bench.registry import Registry; "
            "from lowdim_bench_builtin.methods import peft_bridge; "
            "Registry.from_objects({'peft': peft_bridge}); print('peft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
