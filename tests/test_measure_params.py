"""Parameter counts and stored bytes: tied weights once, buffers and sparse indices honestly."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowdim_bench.measure.params import ParamCount, count_params, serialised_bytes

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def sparse_matrix(rows: int, cols: int, density: float = 0.1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < density)


def test_linear() -> None:
    got = count_params(nn.Linear(20, 7))
    n = 20 * 7 + 7
    assert got == ParamCount(total=n, trainable=n, stored=n, stored_bytes=4 * n, index_bytes=0,
                             bytes_by_dtype={"float32": 4 * n})


def test_tied_weights_counted_once() -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.head = nn.Linear(8, 50, bias=False)
            self.head.weight = self.embed.weight

    model = TiedLM()
    assert sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False)) == 2 * 400
    got = count_params(model)
    assert (got.total, got.trainable, got.stored, got.stored_bytes) == (400, 400, 400, 1600)


def test_frozen_parameters_and_float_buffers() -> None:
    model = nn.Module()
    model.base = nn.Linear(10, 10, bias=False).requires_grad_(False)
    model.adapter = nn.Linear(10, 2, bias=False)
    model.register_buffer("u", torch.randn(10, 3))  # a frozen factor kept as a buffer
    got = count_params(model)
    assert got.total == 100 + 20
    assert got.trainable == 20
    assert got.stored == 120 + 30
    assert got.stored_bytes == 4 * 150
    assert got.index_bytes == 0


def test_buffer_aliasing_a_parameter_is_not_stored_twice() -> None:
    layer = nn.Linear(6, 4, bias=False)
    layer.register_buffer("w_t", layer.weight.detach().t())
    got = count_params(layer)
    assert (got.stored, got.stored_bytes) == (24, 96)


def test_int64_index_buffer_counts_bytes_not_elements() -> None:
    # SLTrain-like layer from the measurement notes: r=64, delta=3%, 1024x1024, with bias.
    m = n = 1024
    r, nnz = 64, math.floor(0.03 * m * n)
    layer = nn.Module()
    layer.A = nn.Parameter(torch.zeros(r, n))
    layer.B = nn.Parameter(torch.zeros(m, r))
    layer.values = nn.Parameter(torch.zeros(nnz))
    layer.bias = nn.Parameter(torch.zeros(m))
    layer.register_buffer("index", torch.arange(nnz, dtype=torch.int64))
    got = count_params(layer)
    assert got.total == got.trainable == got.stored == 163_553
    assert got.index_bytes == 251_656
    assert got.bytes_by_dtype == {"float32": 4 * 163_553, "int64": 251_656}
    assert got.stored_bytes == 4 * 163_553 + 251_656


def test_bool_mask_buffer_is_structure_not_values() -> None:
    layer = nn.Linear(8, 8, bias=False)
    layer.register_buffer("mask", torch.ones(8, 8, dtype=torch.bool))
    got = count_params(layer)
    assert got.stored == 64
    assert got.index_bytes == 64
    assert got.bytes_by_dtype == {"bool": 64, "float32": 256}


def test_sparse_coo_parameter() -> None:
    s = sparse_matrix(40, 30).to_sparse()
    nnz = s._nnz()
    assert 0 < nnz < 40 * 30 // 4
    model = nn.Module()
    model.w = nn.Parameter(s)
    got = count_params(model)
    assert (got.total, got.trainable, got.stored) == (nnz, nnz, nnz)
    assert got.index_bytes == 2 * nnz * 8
    assert got.stored_bytes == 4 * nnz + 2 * nnz * 8


def test_sparse_csr_buffer_counts_crow_col_and_values() -> None:
    rows, cols = 40, 30
    s = sparse_matrix(rows, cols).to_sparse_csr()  # its col_indices view a (2, nnz) storage
    nnz = s.values().numel()
    model = nn.Module()
    model.register_buffer("w", s)
    got = count_params(model)
    assert got.total == 0
    assert got.stored == nnz
    assert got.index_bytes == (rows + 1) * 8 + nnz * 8
    assert got.stored_bytes == (rows + 1) * 8 + nnz * 8 + nnz * 4


def test_bytes_by_dtype_and_integer_parameters() -> None:
    model = nn.Module()
    model.fp16 = nn.Parameter(torch.zeros(10, dtype=torch.float16))
    model.bf16 = nn.Parameter(torch.zeros(6, dtype=torch.bfloat16), requires_grad=False)
    model.codes = nn.Parameter(torch.zeros(12, dtype=torch.int8), requires_grad=False)
    got = count_params(model)
    assert got.total == 28
    assert got.trainable == 10
    assert got.index_bytes == 0
    assert got.bytes_by_dtype == {"bfloat16": 12, "float16": 20, "int8": 12}


def test_meta_tensors_are_not_collapsed() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    assert count_params(model).stored_bytes == 2 * 16 * 4


def test_serialised_bytes_holds_at_least_the_payload() -> None:
    layer = nn.Linear(64, 64)
    assert serialised_bytes(layer) >= count_params(layer).stored_bytes


def test_non_persistent_buffers_are_not_stored():
    m = nn.Linear(4, 3)
    m.register_buffer("cache", torch.zeros(100), persistent=False)
    m.register_buffer("kept", torch.zeros(7), persistent=True)
    c = count_params(m)
    assert c.stored == 15 + 7 and c.stored_bytes == (15 + 7) * 4
