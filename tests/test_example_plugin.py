"""plugins/example (lowdim-bench-dora): DoRA's formulas, and the documented path end to end:
installed into a fresh environment, run through `lowdim-bench run`, named in the records."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kit_fixtures
from lowdim_bench.api import ApplyContext, PluginError

EXAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "example"


def _load_example():
    """Import the example package from its folder without putting the folder on sys.path (where
    an egg-info would make its entry point visible to every other test's registry)."""
    if "lowdim_bench_dora" not in sys.modules:
        pkg = EXAMPLE / "lowdim_bench_dora"
        spec = importlib.util.spec_from_file_location("lowdim_bench_dora", pkg / "__init__.py",
                                                      submodule_search_locations=[str(pkg)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["lowdim_bench_dora"] = module
        spec.loader.exec_module(module)
    return sys.modules["lowdim_bench_dora"]


_dora = _load_example()
DoraLinear, DoraMethod, merge_dora = _dora.DoraLinear, _dora.DoraMethod, _dora.merge_dora

CTX = ApplyContext(seed=0, device=torch.device("cpu"), task=None)


def trained_like(layer: DoraLinear, seed: int = 1) -> DoraLinear:
    """Give B and m non-trivial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
        layer.magnitude.mul_(1 + 0.2 * torch.rand(layer.magnitude.shape, generator=g))
    return layer


def test_forward_is_the_paper_formula():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    layer = trained_like(DoraLinear(base, rank=3, alpha=6.0, detach_norm=True, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(5, 12)
    w = base.weight + (6.0 / 3) * layer.lora_B @ layer.lora_A
    w_dora = layer.magnitude[:, None] * w / w.norm(dim=1, keepdim=True)  # m (W0 + sBA) / ||.||_row
    torch.testing.assert_close(layer(x), F.linear(x, w_dora, base.bias))


def test_identity_at_init_and_magnitude_is_the_row_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    adapted = DoraMethod().apply(model, 2, CTX)
    x = torch.randn(4, 10)
    torch.testing.assert_close(adapted(x), model(x))
    torch.testing.assert_close(adapted[0].magnitude, model[0].weight.norm(dim=1))
    assert all(not p.requires_grad for p in adapted[0].base.parameters())


def test_trainable_parameters_are_r_din_plus_dout_plus_dout():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    adapted = DoraMethod().apply(model, 3, CTX)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable == (3 * (20 + 30) + 30) + (3 * (30 + 5) + 5)


def test_merged_form_matches_and_costs_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    adapted = DoraMethod(merged_inference=True).apply(model, 4, CTX)
    for m in adapted.modules():
        if isinstance(m, DoraLinear):
            trained_like(m)
    x = torch.randn(6, 16)
    before = adapted(x)
    assert merge_dora(adapted) == 2
    assert all(type(m) is nn.Linear for m in adapted if not isinstance(m, nn.ReLU))
    torch.testing.assert_close(adapted(x), before, atol=1e-6, rtol=1e-5)


def test_detached_norm_changes_the_gradient_only():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    x = torch.randn(5, 8)
    grads = {}
    for detach in (True, False):
        layer = trained_like(DoraLinear(base, 2, 2.0, detach, torch.Generator().manual_seed(0)))
        layer(x).square().sum().backward()
        grads[detach] = layer.lora_B.grad.clone()
    assert not torch.allclose(grads[True], grads[False])


def test_bad_hyper_parameters_are_named():
    """Typed `params`: the base class refuses a value of the wrong type or range, naming it."""
    with pytest.raises(PluginError, match=r"alpha = -1 is outside"):
        DoraMethod(alpha=-1)
    with pytest.raises(PluginError, match="detach_norm = 'yes' is not a valid bool"):
        DoraMethod(detach_norm="yes")
    with pytest.raises(PluginError, match="target_modules"):
        DoraMethod(target_modules="q_proj")  # a list of suffixes, or "all"
    with pytest.raises(PluginError, match="rank must be an integer >= 1, got 0"):
        DoraMethod().apply(nn.Linear(3, 3), 0, CTX)


def test_target_modules_picks_layers_by_name_suffix():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    adapted = DoraMethod(target_modules=["2"]).apply(model, 2, CTX)
    assert type(adapted[0]) is nn.Linear and isinstance(adapted[2], DoraLinear)
    with pytest.raises(PluginError, match=r"\['9'\] match no Linear"):
        DoraMethod(target_modules=["9"]).apply(model, 2, CTX)


def test_settings_are_listed_with_types_and_help():
    from lowdim_bench.listing import settings_table

    text = "\n".join(settings_table(DoraMethod))
    assert "alpha" in text and "float" in text and "detach_norm" in text and "bool" in text


def test_matches_peft_dora():
    """Same A, B, m as Hugging Face PEFT's DoRA (use_dora=True): same outputs."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 9))
    ours = DoraMethod(alpha=4.0).apply(model, 2, CTX)
    trained_like(ours[0])
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0"], use_dora=True, lora_dropout=0.0)
    theirs = peft.get_peft_model(__import__("copy").deepcopy(model), cfg)
    layer = theirs.base_model.model[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours[0].lora_A)
        layer.lora_B["default"].weight.copy_(ours[0].lora_B)
        layer.lora_magnitude_vector["default"].weight.copy_(ours[0].magnitude)
    x = torch.randn(4, 12)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory):
    return kit_fixtures.fresh_venv(tmp_path_factory.mktemp("freshvenv"))


@pytest.mark.slow
@pytest.mark.timeout(900)  # builds the shared fresh venv when it runs first
def test_example_installs_into_a_fresh_env_and_runs(fresh_venv, tmp_path):
    bin_ = fresh_venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LOWDIM_BENCH_PLUGIN_MODULES", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    src = shutil.copytree(EXAMPLE, tmp_path / "example", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    r = subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", "-e", str(src)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    listed = subprocess.run([str(bin_ / "lowdim-bench"), "list", "methods"], capture_output=True, text=True, env=env)
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("dora "))
    assert "lowdim-bench-dora 0.1.0" in line
    out = tmp_path / "reports"
    run = subprocess.run([str(bin_ / "lowdim-bench"), "run", "dora-smoke", "--methods", "dora", "--out", str(out),
                          "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    df = pl.read_parquet(next(out.glob("*/records.parquet")))
    assert set(df["method"]) == {"dora"}
    assert set(df["plugin"]) == {"lowdim-bench-dora"} and set(df["plugin_version"]) == {"0.1.0"}
    trainable = df.filter(pl.col("metric") == "params_trainable")["value"][0]
    assert 0 < trainable and df.filter(pl.col("metric") == "budget_reached")["value"][0] <= 0.1
