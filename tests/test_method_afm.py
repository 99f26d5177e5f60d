"""AFM: the exact merge mu + U U^T (y - mu), full-k exactness, counts, FLOPs, budget search."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lowdim_bench.api import ApplyContext, PluginError
from lowdim_bench.measure.params import count_params
from lowdim_bench.registry import Registry
from lowdim_bench.run import budget
from lowdim_bench_builtin.methods import afm as afm_module
from lowdim_bench_builtin.methods.afm import AfmLinear, AfmMethod
from lowdim_bench_builtin.methods.svd import SvdMethod
from lowdim_bench_builtin.tasks._lm_model import ByteLM, LMConfig


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 40, bias=False), nn.ReLU(), nn.Linear(40, 7))


@functools.lru_cache(maxsize=None)
def _calib(n_batches: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    # correlated, offset inputs so the output covariance has a clear spectrum and a non-zero mean
    mix = torch.randn(20, 20, generator=g)
    return tuple(torch.randn(64, 20, generator=g) @ mix + 3.0 for _ in range(n_batches))


def calib(n_batches: int = 4, seed: int = 1) -> list[torch.Tensor]:
    return list(_calib(n_batches, seed))


class Counting:
    """A calibration source that counts how often it was read."""

    def __init__(self, batches: list) -> None:
        self.batches, self.reads = batches, 0

    def __call__(self):
        self.reads += 1
        return iter(self.batches)


def ctx(batches: list | None = None) -> ApplyContext:
    data = calib() if batches is None else batches
    return ApplyContext(seed=0, device=torch.device("cpu"), task=None, calibration=Counting(data))  # type: ignore[arg-type]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def outputs_of(layer: nn.Module, model: nn.Module, batches: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, outputs) of `layer` over the calibration batches, run through `model`."""
    xs, ys = [], []

    def keep(_m: nn.Module, i: tuple, o: torch.Tensor) -> None:
        xs.append(i[0].detach())
        ys.append(o.detach())

    h = layer.register_forward_hook(keep)
    with torch.no_grad():
        for b in batches:
            model(b)
    h.remove()
    return torch.cat(xs), torch.cat(ys)


def test_registers_through_hook() -> None:
    reg = Registry.from_objects({"afm": afm_module})
    assert reg.method("afm").cls is AfmMethod
    assert AfmMethod.kind == "compress" and AfmMethod.defaults["recover"] is False


@pytest.mark.parametrize("index", [0, 2])
def test_output_is_the_projection_on_the_top_k_principal_directions(index: int) -> None:
    base, data, k = mlp(), calib(), 5
    x, y = outputs_of(base[index], base, data)
    # independent reference: numpy covariance (1/N) and eigendecomposition in float64
    y64 = y.double().numpy()
    mu = y64.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(y64, rowvar=False, bias=True))
    u = evecs[:, ::-1][:, :k]
    expected = mu + (y64 - mu) @ u @ u.T
    new = AfmMethod(skip_above_break_even=False).apply(base, k, ctx(data))
    assert isinstance(new[index], AfmLinear) and new[index].rank == k
    with torch.no_grad():
        got = new[index](x).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4 * np.abs(expected).max())
    # and the compressed outputs keep the calibration mean exactly
    np.testing.assert_allclose(got.mean(0), mu, rtol=0, atol=1e-4 * np.abs(mu).max())


def test_full_k_reproduces_the_layer() -> None:
    base = mlp()
    new = AfmMethod(skip_above_break_even=False).apply(base, 40, ctx())
    assert [new[i].rank for i in (0, 2)] == [30, 40]  # clamped to d_out
    assert isinstance(new[4], nn.Linear)  # the head is skipped
    x = torch.randn(16, 20) * 2 + 1
    torch.testing.assert_close(new(x), base(x), rtol=0, atol=1e-4)


def test_factors_and_merged_weight_and_bias() -> None:
    base, k = mlp(), 4
    new = AfmMethod(skip_above_break_even=False).apply(base, k, ctx())
    layer = new[0]
    u = layer.second.weight.detach().double()
    torch.testing.assert_close(u.t() @ u, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-6)  # orthonormal U_k
    torch.testing.assert_close(layer.first.weight, (u.t() @ base[0].weight.double()).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.first.bias, (u.t() @ base[0].bias.double()).float(), rtol=1e-5, atol=1e-6)
    assert new[2].first.bias is None and new[2].second.bias is not None  # bias-free layer keeps the mean term
    x = torch.randn(8, 20)
    with torch.no_grad():
        torch.testing.assert_close(x @ layer.weight.t() + layer.bias, layer(x), rtol=1e-5, atol=1e-5)


def test_output_error_is_never_worse_than_weight_svd_at_equal_k() -> None:
    # AFM is the best rank-k affine map of y; svd's W_k x + b is one such map (U_r U_r^T y + const).
    base, data = mlp(), calib()
    for k in (2, 5, 10):
        a = AfmMethod(skip_above_break_even=False).apply(base, k, ctx(data))
        s = SvdMethod(skip_above_break_even=False).apply(base, k, ctx(data))
        x, y = outputs_of(base[0], base, data)
        with torch.no_grad():
            err_afm = (a[0](x) - y).pow(2).sum()
            err_svd = (s[0](x) - y).pow(2).sum()
        assert err_afm <= err_svd * (1 + 1e-5)


def test_param_count_matches_formula() -> None:
    k = 3
    new = AfmMethod(skip_above_break_even=False).apply(mlp(), k, ctx())
    expected = (k * (20 + 30) + k + 30) + (k * (30 + 40) + 40) + (40 * 7 + 7)
    assert n_params(new) == expected == count_params(new).stored
    assert afm_module.afm_params(20, 30, k, True) == k * (20 + 30) + k + 30


def test_break_even_and_monotone_counts() -> None:
    base, method = mlp(), AfmMethod()
    low, high = method.knob_range(base)
    assert (low, high) == (1, 40)
    counts = [n_params(method.apply(base, k, ctx())) for k in range(1, 41)]
    assert all(a <= b for a, b in zip(counts, counts[1:])) and counts[0] < counts[-1]
    assert counts[-1] == n_params(base)  # every layer back to dense
    # 20 -> 30 with bias: dense 630; AFM k=11: 11*50 + 11 + 30 = 591 < 630; k=12: 642 >= 630
    assert isinstance(method.apply(base, 11, ctx())[0], AfmLinear)
    assert isinstance(method.apply(base, 12, ctx())[0], nn.Linear)


def test_forward_flops_match_formula() -> None:
    batch, k = 9, 4
    new = AfmMethod().apply(mlp(), k, ctx())
    with FlopCounterMode(display=False) as fc:
        new(torch.randn(batch, 20))
    assert fc.get_total_flops() == 2 * batch * (k * (20 + 30) + k * (30 + 40) + 40 * 7)


def test_apply_leaves_the_model_untouched_and_restores_modes() -> None:
    base = mlp().train()
    base[2].eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    AfmMethod().apply(base, 3, ctx())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert all(isinstance(base[i], nn.Linear) for i in (0, 2, 4))
    assert base.training and base[0].training and not base[2].training
    assert not base[0]._forward_hooks and not base[2]._forward_hooks


def test_statistics_are_computed_once_per_model() -> None:
    base, c = mlp(), ctx()
    method = AfmMethod()
    method.apply(base, 2, c)
    method.apply(base, 5, c)
    assert c.calibration.reads == 1
    with torch.no_grad():
        base[0].weight.mul_(2.0)  # a changed weight invalidates the statistics
    method.apply(base, 5, c)
    assert c.calibration.reads == 2


def test_calibration_batches_limits_what_is_read() -> None:
    base, data = mlp(), calib(6)
    few = AfmMethod(calibration_batches=2, skip_above_break_even=False).apply(base, 4, ctx(data))
    only = AfmMethod(skip_above_break_even=False).apply(base, 4, ctx(data[:2]))
    torch.testing.assert_close(few[0].second.bias, only[0].second.bias)


def test_recovery_gradients_reach_both_factors() -> None:
    new = AfmMethod().apply(mlp(), 3, ctx()).train()
    new(torch.randn(8, 20)).pow(2).sum().backward()
    for layer in (new[0], new[2]):
        assert layer.first.weight.grad is not None and layer.first.weight.grad.abs().sum() > 0
        assert layer.second.weight.grad is not None and layer.second.bias.grad.abs().sum() > 0


def test_language_model_tokens_every_position_counts() -> None:
    torch.manual_seed(0)
    model = ByteLM(LMConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, context=8)).eval()
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (4, 8), generator=g) for _ in range(3)]
    method = AfmMethod(skip_above_break_even=False)
    names = [n for n, _ in method.select(model)]
    assert "head" not in names and {"blocks.0.attn.wq", "blocks.0.mlp.down"} <= set(names)
    full = method.apply(model, 24, ctx(data))
    with torch.no_grad():
        torch.testing.assert_close(full(data[0]), model(data[0]), rtol=0, atol=1e-4)
    low = AfmMethod().apply(model, 2, ctx(data))
    assert isinstance(low.blocks[0].mlp.up, AfmLinear) and low.blocks[0].mlp.up.rank == 2


def test_budget_search_lands_within_one_knob_step() -> None:
    base, method, c = mlp(), AfmMethod(), ctx()
    dense = count_params(base).stored
    for target in (0.3, 0.6, 0.9):
        sized = budget.search(method, base, "compress", target, dense, c)
        assert sized.fraction <= target
        above = count_params(method.apply(base, int(sized.knob) + 1, c)).stored / dense
        assert above > target or sized.knob == method.knob_range(base)[1]


def test_bad_hparams_and_inputs_are_errors() -> None:
    with pytest.raises(PluginError, match="recover"):
        AfmMethod(recover="yes")
    with pytest.raises(PluginError, match="calibration_batches"):
        AfmMethod(calibration_batches=0)
    with pytest.raises(PluginError, match="missing"):
        AfmMethod(skip_modules=["missing"]).apply(mlp(), 2, ctx())
    with pytest.raises(PluginError, match="rank"):
        AfmMethod().apply(mlp(), 0, ctx())
    with pytest.raises(PluginError, match="calibration"):
        AfmMethod().apply(mlp(), 2, ctx([]))
