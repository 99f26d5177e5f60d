"""The tensor-memory tracker against analytic figures, on CPU.

Tolerances: parameters are exact (every storage is counted once); gradients are exact when the
peak falls in the optimizer step (all gradients alive then); optimizer state is the analytic
2 x trainable plus Adam's step scalars, at most 16 bytes per trainable tensor. Models are sized
so that the peak lands where each test needs it, and each test asserts that first.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from lowdim_bench.measure.memory import (
    MemoryBreakdown, analytic_train_memory, measure_inference, measure_train_step, tensor_storages,
)

STEP_SLACK = 16  # bytes per trainable tensor: Adam's step counter (a float32 scalar on CPU)


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out))


def train_setup(model: nn.Module, batch: int, d_in: int, d_out: int):
    x, y = torch.randn(batch, d_in), torch.randint(0, d_out, (batch,))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return (lambda: F.cross_entropy(model(x), y)), opt, x, y


def n_trainable(model: nn.Module) -> int:
    return sum(1 for p in model.parameters() if p.requires_grad)


def split_sum(r: MemoryBreakdown) -> int:
    return r.parameters + r.gradients + r.optimizer + r.activations + r.other


class LoRALinear(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, d_in) * 0.01)
        self.B = nn.Parameter(torch.zeros(d_out, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.A.T) @ self.B.T


class SparseLinear(nn.Module):
    """Trainable values on a fixed support held as an int64 index buffer (SLTrain-like)."""

    def __init__(self, d_in: int, d_out: int, density: float) -> None:
        super().__init__()
        nnz = int(density * d_in * d_out)
        flat = torch.randperm(d_in * d_out, generator=torch.Generator().manual_seed(0))[:nnz].sort().values
        self.register_buffer("index", torch.stack([flat // d_in, flat % d_in]))
        self.values = nn.Parameter(torch.randn(nnz) * 0.05)
        self.shape = (d_out, d_in)

    def forward(self, x):
        w = torch.sparse_coo_tensor(self.index, self.values, self.shape, check_invariants=False)
        return torch.sparse.mm(w, x.T).T


def test_dense_adamw_parameters_gradients_optimizer_match_analytic():
    # Wide layers, batch 8: the peak is in optimizer.step, where every gradient is alive.
    model = mlp(256, 512, 10)
    step, opt, x, y = train_setup(model, 8, 256, 10)
    r = measure_train_step(model, step, opt)
    a = analytic_train_memory(model, "adamw")
    assert r.peak_phase == "optimizer"
    assert r.peak == split_sum(r)
    assert r.parameters == a["parameters"]
    assert r.gradients == a["gradients"]
    assert 0 <= r.optimizer - a["optimizer"] <= STEP_SLACK * n_trainable(model)
    # Other: the batch plus AdamW's per-tensor working buffers (at most two of the largest weight).
    largest = 512 * 512 * 4
    assert x.nbytes + y.nbytes <= r.other <= x.nbytes + y.nbytes + 2 * largest + 4096
    # The split at the peak hides the activations, activations_max does not: at least the
    # saved ReLU outputs (batch x hidden widths) were alive during backward.
    assert r.activations < 8 * 512 * 4 <= 2 * 8 * 512 * 4 <= r.activations_max


def test_dense_activations_are_saved_outputs_plus_backward_temporaries():
    # Narrow layers, batch 1024: the peak is early in backward. Saved ReLU outputs are
    # batch * sum(hidden) * 4 bytes (the floor); on top, backward holds the gradient w.r.t. one
    # layer's output and its ReLU-masked copy (two layer widths), so at most 2.5x here.
    model = mlp(32, 128, 10)
    step, opt, _, _ = train_setup(model, 1024, 32, 10)
    r = measure_train_step(model, step, opt)
    a = analytic_train_memory(model)
    saved = 1024 * (128 + 128) * 4
    assert r.peak_phase == "backward"
    assert saved <= r.activations <= 2.5 * saved
    assert r.activations_max == r.activations  # the peak is where activations are highest
    assert r.parameters == a["parameters"]
    assert 0 <= r.optimizer - a["optimizer"] <= STEP_SLACK * n_trainable(model)
    assert 0 <= r.gradients < a["gradients"]  # part of backward is still to come at the peak
    assert r.peak == split_sum(r)


def test_frozen_base_counts_only_the_adapter_share():
    # The case torch's MemTracker crashes on: most parameters have requires_grad=False.
    torch.manual_seed(0)
    model = nn.Sequential(LoRALinear(512, 512, 32), nn.ReLU(), LoRALinear(512, 10, 8))
    step, opt, _, _ = train_setup(model, 4, 512, 10)
    r = measure_train_step(model, step, opt)
    a = analytic_train_memory(model)
    adapter = sum(p.nbytes for p in model.parameters() if p.requires_grad)
    frozen = sum(p.nbytes for p in model.parameters() if not p.requires_grad)
    assert r.peak_phase == "optimizer"
    assert r.parameters == adapter + frozen == a["parameters"]
    assert r.gradients == adapter == a["gradients"]
    assert 0 <= r.optimizer - 2 * adapter <= STEP_SLACK * n_trainable(model)
    assert r.gradients < frozen / 4


def test_int64_index_buffer_and_sparse_trainable_values():
    torch.manual_seed(0)
    model = nn.Sequential(SparseLinear(256, 256, 0.1), nn.ReLU(), nn.Linear(256, 10))
    step, opt, _, _ = train_setup(model, 16, 256, 10)
    r = measure_train_step(model, step, opt)
    a = analytic_train_memory(model)
    sparse = model[0]
    assert sparse.index.dtype == torch.int64
    head = sum(p.nbytes for p in model[2].parameters())
    assert r.parameters == sparse.index.nbytes + sparse.values.nbytes + head == a["parameters"]
    assert a["gradients"] == sparse.values.nbytes + head
    assert 0 <= r.gradients <= a["gradients"]
    assert 0 <= r.optimizer - a["optimizer"] <= STEP_SLACK * n_trainable(model)
    # sparse.mm's backward on CPU makes a dense 256 x 256 gradient first: seen as activations.
    assert r.activations >= 256 * 256 * 4
    assert r.peak == split_sum(r)


def test_optimizer_state_made_inside_the_tracked_step_is_optimizer():
    model = mlp(256, 512, 10)
    step, opt, _, _ = train_setup(model, 8, 256, 10)
    r = measure_train_step(model, step, opt, warmup_steps=0)
    a = analytic_train_memory(model)
    assert r.peak_phase == "optimizer"
    assert 0 <= r.optimizer - a["optimizer"] <= STEP_SLACK * n_trainable(model)
    assert r.gradients == a["gradients"]


def test_inference_has_no_gradients_or_optimizer_and_restores_mode():
    model = mlp(32, 128, 10)
    model.train()
    x = torch.randn(1024, 32)
    r = measure_inference(model, (x,))
    assert (r.gradients, r.optimizer) == (0, 0)
    assert r.parameters == analytic_train_memory(model)["parameters"]
    assert r.other == x.nbytes
    # No graph is kept: at most one layer's input and output are alive together.
    assert 1024 * 128 * 4 <= r.activations <= 2 * 1024 * 128 * 4 + 1024 * 10 * 4
    assert r.peak == split_sum(r)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


class LateConstant(nn.Module):
    """A big temporary first, then a plain-attribute tensor (neither parameter nor buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.constant = torch.ones(100_000)

    def forward(self, x):
        big = torch.ones(1_000_000)
        small = big[:10].sum()
        del big
        return x + self.constant + small


def test_pre_existing_tensor_first_used_after_the_peak_is_in_the_peak():
    # It was alive all along, so the peak (while `big` lived) must include it.
    x = torch.zeros(100_000)
    r = measure_inference(LateConstant(), (x,))
    assert r.peak_phase == "forward"
    assert r.other == x.nbytes + 100_000 * 4
    assert r.activations == 1_000_000 * 4 + 4  # `big` and the scalar summed from it
    assert r.peak == split_sum(r)


def test_second_measurement_works_and_training_continues_after():
    model = mlp(32, 64, 4)
    step, opt, _, _ = train_setup(model, 64, 32, 4)
    first = measure_train_step(model, step, opt)
    second = measure_train_step(model, step, opt)
    assert (first.parameters, first.gradients, first.optimizer, first.activations, first.other, first.peak) == (
        second.parameters, second.gradients, second.optimizer, second.activations, second.other, second.peak)
    # Nothing left installed: no dispatch mode, no grad hooks.
    assert _get_current_dispatch_mode() is None
    assert all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())
    # A real training loop still works on the same model and optimizer.
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = step()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert opt.state[model[0].weight]["step"].item() == 2 * 2 + 30  # warm-up + tracked, twice


def test_measurement_survives_an_exception_in_the_step():
    model = mlp(8, 8, 2)
    opt = torch.optim.AdamW(model.parameters())

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        measure_train_step(model, broken, opt, warmup_steps=0)
    assert _get_current_dispatch_mode() is None
    assert all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())


def test_process_and_cuda_peaks_on_cpu():
    model = mlp(32, 64, 4)
    step, opt, _, _ = train_setup(model, 64, 32, 4)
    r = measure_train_step(model, step, opt)
    assert r.cuda_allocated_peak is None and r.cuda_reserved_peak is None
    if not os.access("/proc/self/clear_refs", os.W_OK):
        assert r.process_peak is None
    else:
        assert r.process_peak is not None and r.process_peak > r.peak  # the whole process, libs included


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_tensor_storages_of_sparse_layouts():
    dense = torch.zeros(4, 4)
    dense[0, 1] = dense[2, 3] = 1.0
    coo = dense.to_sparse()
    assert sum(s.nbytes() for s in tensor_storages(coo)) == 2 * 2 * 8 + 2 * 4
    crow, col = torch.tensor([0, 1, 1, 2, 2]), torch.tensor([1, 3])
    csr = torch.sparse_csr_tensor(crow, col, torch.ones(2), (4, 4), check_invariants=True)
    assert sum(s.nbytes() for s in tensor_storages(csr)) == 5 * 8 + 2 * 8 + 2 * 4
    view = dense[1:]
    assert tensor_storages(view)[0] is tensor_storages(dense)[0]


def test_analytic_figures():
    model = nn.Linear(10, 5)
    model.weight.requires_grad_(False)
    a = analytic_train_memory(model, "adam")
    assert a == {"parameters": 220, "gradients": 20, "optimizer": 40, "total": 280}
    assert analytic_train_memory(model, "sgd")["optimizer"] == 0
    with pytest.raises(ValueError):
        analytic_train_memory(model, "lion")
