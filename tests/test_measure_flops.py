"""FLOP counts pinned to closed forms, plus canaries on torch's own counter for each hole we fill."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from lowdim_bench.measure.flop_formulas import make_counter
from lowdim_bench.measure.flops import (
    FlopCount,
    forward_flops,
    opt_einsum_active,
    train_step_flops,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
    pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled"),
]


def bare_flops(fn) -> int:
    """torch's counter with no fixes of ours."""
    with FlopCounterMode(display=False) as c:
        fn()
    return c.get_total_flops()


def fixed_flops(fn) -> int:
    with make_counter() as c:
        fn()
    return c.get_total_flops()


class OpLog(TorchDispatchMode):
    """Records the ATen ops a call dispatches, so a canary knows which kernel it exercised."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func._overloadpacket))
        return func(*args, **(kwargs or {}))


def sparse_matrix(rows: int, cols: int, density: float = 0.2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(rows, cols, generator=g)
    keep = torch.rand(rows, cols, generator=g) < density
    return dense * keep


class Fn(nn.Module):
    """Wraps a function of the inputs as a module (forward_flops takes a module)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


# ---- dense kernels ----------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_linear_is_2_b_in_out_and_bias_not_counted(bias: bool) -> None:
    layer = nn.Linear(24, 10, bias=bias)
    got = forward_flops(layer, (torch.randn(7, 24),))
    assert got.executed == 2 * 7 * 24 * 10
    assert got.ideal == got.executed


def test_mlp_is_exactly_twice_macs_and_split_by_module() -> None:
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    batch = 9
    macs = batch * (32 * 64 + 64 * 16 + 16 * 3)
    got = forward_flops(model, (torch.randn(batch, 32),))
    assert got.executed == 2 * macs
    assert got.by_module == {"0": 2 * batch * 32 * 64, "1": 0, "2": 2 * batch * 64 * 16, "3": 0, "4": 2 * batch * 16 * 3}


def test_forward_accepts_a_bare_tensor() -> None:
    assert forward_flops(nn.Linear(4, 5), torch.randn(3, 4)).executed == 2 * 3 * 4 * 5


def conv_out(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,dil,groups",
    [(6, 12, 3, 1, 1, 1, 1), (6, 12, 3, 2, 0, 2, 3), (8, 8, 5, 1, 2, 1, 8), (4, 6, (3, 1), 2, 1, 3, 2)],
)
def test_conv2d_groups_dilation_stride(cin, cout, k, stride, pad, dil, groups) -> None:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups)
    kh, kw = (k, k) if isinstance(k, int) else k
    batch, h, w = 3, 17, 13
    hout, wout = conv_out(h, kh, stride, pad, dil), conv_out(w, kw, stride, pad, dil)
    x = torch.randn(batch, cin, h, w)
    assert conv(x).shape[-2:] == (hout, wout)
    want = 2 * batch * cout * hout * wout * (cin // groups) * kh * kw
    assert forward_flops(conv, (x,)).executed == want


def test_einsum_two_operands_is_a_matmul() -> None:
    f = Fn(lambda x, w: torch.einsum("bi,oi->bo", x, w))
    assert forward_flops(f, (torch.randn(5, 12), torch.randn(7, 12))).executed == 2 * 5 * 12 * 7


def test_einsum_count_follows_the_contraction_path_torch_takes() -> None:
    # (100x100)(100x100)(100x1): left to right costs 2e6 + 2e4; the best path (right first) 4e4.
    f = Fn(lambda a, b, c: torch.einsum("ab,bc,cd->ad", a, b, c))
    got = forward_flops(f, (torch.randn(100, 100), torch.randn(100, 100), torch.randn(100, 1)))
    assert got.opt_einsum == opt_einsum_active()
    assert got.executed == (40_000 if got.opt_einsum else 2_020_000)


# ---- attention: CPU flash kernel hole ------------------------------------------------------

B, H, LQ, LK, D = 2, 3, 5, 7, 8


def qkv(requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    shapes = [(B, H, LQ, D), (B, H, LK, D), (B, H, LK, D)]
    return tuple(torch.randn(*s, generator=g).requires_grad_(requires_grad) for s in shapes)


def test_torch_counts_zero_for_cpu_flash_attention() -> None:
    q, k, v = qkv(requires_grad=True)
    log = OpLog()
    with log:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in log.ops
    assert "aten._scaled_dot_product_flash_attention_for_cpu_backward" in log.ops
    assert bare_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == 0


def test_cpu_attention_forward_matches_math_backend() -> None:
    attn = Fn(F.scaled_dot_product_attention)
    default = forward_flops(attn, qkv())
    with sdpa_kernel(SDPBackend.MATH):
        math = forward_flops(attn, qkv())
    assert default.executed == math.executed == 4 * B * H * LQ * LK * D


def test_cpu_attention_backward_counts_recompute_over_math() -> None:
    def step(backend: SDPBackend | None) -> int:
        q, k, v = qkv(requires_grad=True)
        run = lambda: F.scaled_dot_product_attention(q, k, v).sum()  # noqa: E731
        if backend is None:
            return train_step_flops(nn.Module(), run).executed
        with sdpa_kernel(backend):
            return train_step_flops(nn.Module(), run).executed

    scores = 2 * B * H * LQ * LK * D
    assert step(SDPBackend.MATH) == 2 * scores + 4 * scores  # forward 2 bmm, backward 4 bmm
    assert step(None) == 2 * scores + 5 * scores  # the fused backward recomputes Q K^T


# ---- sparse products -------------------------------------------------------------------

def test_torch_counts_zero_for_sparse_mm_and_dense_for_sparse_mm_operands() -> None:
    s, x = sparse_matrix(16, 64), torch.randn(64, 8)
    dense_product = 2 * 16 * 64 * 8
    assert bare_flops(lambda: torch.sparse.mm(s.to_sparse(), x)) == 0
    assert bare_flops(lambda: torch.sparse.mm(s.to_sparse_csr(), x)) == 0
    assert bare_flops(lambda: s.to_sparse_csr() @ x) == dense_product
    assert bare_flops(lambda: s.to_sparse() @ x) == dense_product
    assert bare_flops(lambda: torch.addmm(torch.zeros(16, 8), s.to_sparse_csr(), x)) == dense_product


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_times_dense_counted_by_nnz(layout: str) -> None:
    s, x = sparse_matrix(16, 64), torch.randn(64, 8)
    sp = s.to_sparse() if layout == "coo" else s.to_sparse_csr()
    nnz = int((s != 0).sum())
    assert 0 < nnz < s.numel() // 2
    assert fixed_flops(lambda: torch.sparse.mm(sp, x)) == 2 * nnz * 8
    assert fixed_flops(lambda: sp @ x) == 2 * nnz * 8
    assert fixed_flops(lambda: torch.addmm(torch.zeros(16, 8), sp, x)) == 2 * nnz * 8
    # A sparse weight in F.linear lands as dense @ sparse^T.
    assert fixed_flops(lambda: F.linear(torch.randn(5, 64), sp)) == 2 * 5 * nnz


def test_sparse_times_sparse_counts_only_meeting_nonzeros() -> None:
    a, b = sparse_matrix(12, 20, seed=1), sparse_matrix(20, 9, seed=2)
    want = 2 * int(((a != 0).sum(0) * (b != 0).sum(1)).sum())
    assert fixed_flops(lambda: torch.sparse.mm(a.to_sparse(), b.to_sparse())) == want
    assert fixed_flops(lambda: a.to_sparse_csr() @ b.to_sparse_csr()) == want


def test_other_sparse_kernels_counted_by_nnz() -> None:
    s, x = sparse_matrix(16, 64), torch.randn(64, 8)
    nnz = int((s != 0).sum())
    assert fixed_flops(lambda: torch.hspmm(s.to_sparse(), x)) == 2 * nnz * 8
    assert fixed_flops(lambda: torch.smm(s.to_sparse(), x)) == 2 * nnz * 8
    batched = torch.stack([s, s]).to_sparse()
    assert fixed_flops(lambda: torch.bmm(batched, torch.randn(2, 64, 8))) == 2 * (2 * nnz) * 8
    mask = s.to_sparse_csr()
    a, b = torch.randn(16, 5), torch.randn(5, 64)
    assert fixed_flops(lambda: torch.sparse.sampled_addmm(mask, a, b)) == 2 * nnz * 5


def test_sparse_mm_backward_is_dense_in_executed_flops() -> None:
    # torch's CPU backward of sparse.mm builds the dense weight gradient, then masks it.
    s = sparse_matrix(16, 64)
    coo = s.to_sparse()
    values = nn.Parameter(coo._values().clone())
    x = torch.randn(64, 8, requires_grad=True)
    nnz = values.numel()

    def step() -> torch.Tensor:
        w = torch.sparse_coo_tensor(coo._indices(), values, (16, 64))
        return torch.sparse.mm(w, x).sum()

    got = train_step_flops(nn.Module(), step)
    assert got.executed == 2 * nnz * 8 + 2 * 16 * 8 * 64 + 2 * nnz * 8


# ---- training steps -------------------------------------------------------------------------

def test_linear_train_step_is_twice_forward_when_input_needs_no_grad() -> None:
    layer = nn.Linear(24, 10)
    x = torch.randn(7, 24)
    fwd = forward_flops(layer, (x,)).executed
    assert train_step_flops(layer, lambda: layer(x).sum()).executed == 2 * fwd
    xg = x.clone().requires_grad_(True)
    assert train_step_flops(layer, lambda: layer(xg).sum()).executed == 3 * fwd


def test_train_step_split_by_module() -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))
    x = torch.randn(3, 6)
    got = train_step_flops(model, lambda: model(x).square().mean())
    first, last = 2 * 3 * 6 * 5, 2 * 3 * 5 * 4
    assert got.by_module == {"0": 2 * first, "1": 0, "2": 3 * last}
    assert got.executed == sum(got.by_module.values())


class LoraLike(nn.Module):
    def __init__(self, d_in: int, d_out: int, r: int) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out).requires_grad_(False)
        self.a = nn.Linear(d_in, r, bias=False)
        self.b = nn.Linear(r, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.b(self.a(x))


def test_frozen_base_lora_backward_adds_only_the_adapter_share() -> None:
    d_in, d_out, r, batch = 40, 30, 4, 6
    model = LoraLike(d_in, d_out, r)
    x = torch.randn(batch, d_in)
    fwd = 2 * batch * (d_in * d_out + d_in * r + r * d_out)
    assert forward_flops(model, (x,)).executed == fwd
    # backward: grad A (input needs none), grad B and grad of B's input; nothing for the base.
    bwd = 2 * batch * (d_in * r + 2 * r * d_out)
    got = train_step_flops(model, lambda: model(x).sum())
    assert got.executed == fwd + bwd
    assert got.ideal == got.executed


def test_train_step_rejects_non_scalar_loss() -> None:
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="scalar"):
        train_step_flops(layer, lambda: layer(torch.randn(4, 3)))


# ---- ideal FLOPs ------------------------------------------------------------------------

class DenseRebuild(nn.Module):
    """SLTrain-like: rebuilds W = B A + scatter(S) each call, then a dense product."""

    def __init__(self, d_in: int, d_out: int, r: int, nnz: int, backward_override: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = nn.Parameter(torch.randn(r, d_in, generator=g))
        self.B = nn.Parameter(torch.randn(d_out, r, generator=g))
        self.values = nn.Parameter(torch.randn(nnz, generator=g))
        self.register_buffer("index", torch.randperm(d_in * d_out, generator=g)[:nnz])
        self.shape = (d_out, d_in)
        if backward_override:
            self.ideal_backward_flops = self._ideal_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.B @ self.A).flatten().index_add(0, self.index, self.values).view(self.shape)
        return F.linear(x, w)

    def _factored(self, x: torch.Tensor) -> int:
        d_out, d_in = self.shape
        return 2 * x.shape[0] * (self.A.shape[0] * (d_in + d_out) + self.values.numel())

    def ideal_flops(self, x: torch.Tensor) -> int:
        return self._factored(x)

    def _ideal_backward(self, x: torch.Tensor) -> int:
        return 2 * self._factored(x)


def test_ideal_flops_replaces_the_declaring_module_share() -> None:
    d_in, d_out, r, nnz, batch = 32, 24, 3, 50, 5
    model = nn.Sequential(nn.Linear(16, d_in), DenseRebuild(d_in, d_out, r, nnz))
    x = torch.randn(batch, 16)
    got = forward_flops(model, (x,))
    head = 2 * batch * 16 * d_in
    rebuild = 2 * d_out * r * d_in + 2 * batch * d_in * d_out
    assert got.executed == head + rebuild
    assert got.ideal == head + 2 * batch * (r * (d_in + d_out) + nnz)
    assert got.by_module == {"0": head, "1": rebuild}


def test_only_the_outermost_ideal_module_counts() -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = DenseRebuild(8, 8, 2, 10)

        def forward(self, x):
            return self.inner(x)

        def ideal_flops(self, x) -> int:
            return 7

    got = forward_flops(Outer(), (torch.randn(3, 8),))
    assert got.ideal == 7
    assert got.executed == 2 * 8 * 2 * 8 + 2 * 3 * 8 * 8


def test_ideal_in_training_swaps_forward_and_declared_backward() -> None:
    d_in, d_out, r, nnz, batch, classes = 32, 24, 3, 50, 5, 4
    for override in (False, True):
        sl = DenseRebuild(d_in, d_out, r, nnz, backward_override=override)
        model = nn.Sequential(sl, nn.Linear(d_out, classes))
        x = torch.randn(batch, d_in)
        got = train_step_flops(model, lambda: model(x).sum())
        sl_fwd = 2 * d_out * r * d_in + 2 * batch * d_in * d_out
        sl_bwd = 2 * batch * d_in * d_out + 2 * (2 * d_out * r * d_in)  # dW, then dB and dA
        head = 2 * batch * d_out * classes
        assert got.executed == sl_fwd + sl_bwd + 3 * head
        ideal_fwd = 2 * batch * (r * (d_in + d_out) + nnz)
        want_bwd = 2 * ideal_fwd if override else sl_bwd
        assert got.ideal == ideal_fwd + want_bwd + 3 * head


def test_flopcount_fields() -> None:
    got = forward_flops(nn.Linear(2, 2), (torch.randn(1, 2),))
    assert isinstance(got, FlopCount)
    assert got.by_module == {}
    assert isinstance(got.opt_einsum, bool)
