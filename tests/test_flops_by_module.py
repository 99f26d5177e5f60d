"""Per-module FLOPs: each op counted once, in the innermost module running it, summed per
top-level child; never 0 for a called subtree (an nn.ModuleList, PEFT's base_model), and the
children (plus the root's own ops) sum to the total, forward and training step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowdim_bench.api import ApplyContext
from lowdim_bench.measure.flops import ROOT, forward_flops, train_step_flops
from lowdim_bench_builtin.methods.intrinsic import IntrinsicMethod
from lowdim_bench_builtin.methods.sltrain import SLTrainLinear, SLTrainMethod
from lowdim_bench_builtin.tasks.stdlib_lm import StdlibLM

CPU = torch.device("cpu")


def lm_task() -> StdlibLM:
    return StdlibLM(d_model=32, n_layers=2, n_heads=2, d_ff=64, context=16, max_corpus_bytes=50_000, eval_windows=4)


def check_split(count, model: nn.Module) -> None:
    assert sum(count.by_module.values()) == count.executed
    assert set(model._modules) <= set(count.by_module)


def test_stdlib_lm_blocks_modulelist_gets_its_flops_and_the_split_sums() -> None:
    task = lm_task()
    model = task.make_model(0)
    (x,) = task.example_inputs(2, CPU)
    fwd = forward_flops(model.eval(), (x,))
    check_split(fwd, model)
    assert fwd.by_module["blocks"] > 0 and fwd.by_module["head"] == 2 * 2 * 16 * 32 * 256
    batch = task.example_batch(2, CPU)
    step = train_step_flops(model.train(), lambda: task.loss(model, batch))
    check_split(step, model)
    assert step.by_module["blocks"] > 2 * fwd.by_module["blocks"]  # backward of every block is in there


def test_peft_base_model_is_credited_though_peft_calls_the_inner_model() -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    model = peft.get_peft_model(inner, peft.LoraConfig(r=2, target_modules=["0", "2"]))
    x = torch.randn(4, 16)
    fwd = forward_flops(model, (x,))
    check_split(fwd, model)
    dense = 2 * 4 * (16 * 32 + 32 * 8)
    lora = 2 * 4 * 2 * (16 + 32 + 32 + 8)
    assert fwd.by_module["base_model"] == fwd.executed == dense + lora
    step = train_step_flops(model, lambda: model(x).square().mean())
    check_split(step, model)
    assert step.by_module["base_model"] == step.executed > fwd.executed


def test_intrinsic_projection_is_counted_once() -> None:
    """The projection runs inside the base's functional call; torch's tracker counted it twice."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 5))
    model = IntrinsicMethod(projection="dense").apply(base, 30, ApplyContext(seed=0, device=CPU, task=None))
    x, y = torch.randn(8, 12), torch.randint(0, 5, (8,))
    step = train_step_flops(model, lambda: F.cross_entropy(model(x), y))
    check_split(step, model)
    assert all(v >= 0 for v in step.by_module.values())


def test_root_own_ops_are_their_own_entry() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.w = nn.Parameter(torch.randn(6, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) @ self.w

    net, x = Net(), torch.randn(5, 4)
    got = forward_flops(net, (x,))
    assert got.by_module == {"a": 2 * 5 * 4 * 6, ROOT: 2 * 5 * 6 * 3}


def test_sltrain_ideal_training_step_counts_the_sparse_gradient_not_a_dense_one() -> None:
    """Ideal backward of W = B A s + S: 4 T m r + 2 T r n + 2 T nnz (input needs no gradient)."""
    m, n, r, tokens = 48, 32, 4, 10
    gen = torch.Generator().manual_seed(0)
    support = torch.randperm(m * n, generator=gen)[: math.floor(0.05 * m * n)].sort().values
    layer = SLTrainLinear(n, m, r, 32.0, support, None, "factored", gen)
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(tokens, n)
    step = train_step_flops(layer, lambda: layer(x).square().sum())
    forward = 2 * tokens * (r * (m + n) + layer.nnz)
    backward = 4 * tokens * m * r + 2 * tokens * r * n + 2 * tokens * layer.nnz
    assert step.ideal == forward + backward
    assert step.executed > step.ideal  # torch's sparse product builds a dense gradient for the values


def test_sltrain_model_ideal_step_is_below_executed() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model = SLTrainMethod().apply(base, 4, ApplyContext(seed=0, device=CPU, task=None))
    x, y = torch.randn(8, 32), torch.randint(0, 10, (8,))
    step = train_step_flops(model, lambda: F.cross_entropy(model(x), y))
    check_split(step, model)
    assert step.ideal < step.executed
