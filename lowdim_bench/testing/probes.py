"""Look inside a model: snapshots to diff, tensors the counters cannot see, mostly-zero dense
tensors, and the operands of every matmul/convolution a forward call executes.

Why each probe exists: a method that mutates its input, hides state outside parameters and
buffers, or keeps a sparse part as a dense zero-filled tensor skews params, bytes and FLOPs
without any error; these probes make that visible.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..api import Inputs

aten = torch.ops.aten
ZERO_FRACTION = 0.5  # a dense tensor at least this share exactly zero is a sparse part stored dense
MIN_NUMEL = 64  # smaller tensors (biases of tiny layers, scalars) are never flagged


@dataclass
class ModelSnapshot:
    """Values, requires_grad flags and module structure of a model at one moment."""

    tensors: dict[str, torch.Tensor]
    requires_grad: dict[str, bool]
    structure: list[tuple[str, str]]


def snapshot(model: nn.Module) -> ModelSnapshot:
    tensors = {f"param {n}": p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    tensors.update({f"buffer {n}": b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False)})
    flags = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
    structure = [(n, type(m).__qualname__) for n, m in model.named_modules(remove_duplicate=False)]
    return ModelSnapshot(tensors, flags, structure)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.layout != torch.strided or b.layout != torch.strided:
        a, b = a.to_dense(), b.to_dense()
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def diff_snapshots(before: ModelSnapshot, after: ModelSnapshot, limit: int = 5) -> list[str]:
    """Human-readable differences, at most `limit` of each sort."""
    out: list[str] = []
    if before.structure != after.structure:
        gone = [n or "<root>" for n, t in before.structure if (n, t) not in after.structure]
        new = [n or "<root>" for n, t in after.structure if (n, t) not in before.structure]
        out.append(f"module structure changed (replaced or removed: {gone[:limit]}, added: {new[:limit]})")
    changed = [n for n, t in before.tensors.items() if n in after.tensors and not _same(t, after.tensors[n])]
    missing = [n for n in before.tensors if n not in after.tensors]
    if changed:
        out.append(f"values changed: {changed[:limit]}" + (f" and {len(changed) - limit} more" if len(changed) > limit else ""))
    if missing:
        out.append(f"tensors gone: {missing[:limit]}")
    flips = [f"{n} {before.requires_grad[n]}->{after.requires_grad[n]}" for n in before.requires_grad
             if n in after.requires_grad and before.requires_grad[n] != after.requires_grad[n]]
    if flips:
        out.append(f"requires_grad changed: {flips[:limit]}" + (f" and {len(flips) - limit} more" if len(flips) > limit else ""))
    return out


def _tensors_in(value: Any, path: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, (list, tuple)):
        return [x for i, v in enumerate(value) for x in _tensors_in(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _tensors_in(v, f"{path}[{k!r}]")]
    return []


def hidden_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Floating tensors held as plain module attributes (not parameters or buffers), more than one
    element each: count_params cannot see them and state_dict does not save them."""
    registered = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    out = []
    for mname, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr in ("_parameters", "_buffers", "_modules") or attr.startswith("__"):
                continue
            for path, t in _tensors_in(value, f"{mname + '.' if mname else ''}{attr}"):
                if id(t) not in registered and (t.is_floating_point() or t.is_complex()) and t.numel() > 1:
                    out.append((path, t))
    return out


def zero_fraction(t: torch.Tensor) -> float:
    return float((t.detach() == 0).sum()) / max(1, t.numel())


def scattered_zero_fraction(t: torch.Tensor) -> float:
    """Zero share once all-zero rows and columns are set aside (as a matrix of shape[0] rows).

    Whole zero rows or columns are what a zero-initialised factor (LoRA's B, SLTrain's B) keeps
    where no gradient has reached yet (a unit dead on every sample); zeros scattered inside
    the live rows and columns are what a sparsity mask leaves.
    """
    m = t.detach().reshape(t.shape[0], -1) != 0
    rows, cols = m.any(dim=1), m.any(dim=0)
    live = m[rows][:, cols]
    if live.numel() == 0:
        return 0.0
    return 1.0 - float(live.sum()) / live.numel()


def is_sparse_as_dense(t: torch.Tensor) -> bool:
    """A dense floating tensor of 2+ dims that is mostly zeros, the zeros scattered like a mask's."""
    return (t.layout == torch.strided and t.is_floating_point() and t.dim() >= 2 and t.numel() >= MIN_NUMEL
            and zero_fraction(t) >= ZERO_FRACTION and scattered_zero_fraction(t) >= ZERO_FRACTION)


def mostly_zero_tensors(model: nn.Module) -> list[tuple[str, tuple, float]]:
    """Dense floating parameters and persistent buffers of 2+ dims that are mostly exact zeros,
    scattered (see scattered_zero_fraction)."""
    named = list(model.named_parameters())
    for mname, m in model.named_modules():
        named += [(f"{mname + '.' if mname else ''}{n}", b) for n, b in m._buffers.items()
                  if b is not None and n not in m._non_persistent_buffers_set]
    out = []
    for name, t in named:
        if is_sparse_as_dense(t):
            out.append((name, tuple(t.shape), zero_fraction(t)))
    return out


MATMUL_OPS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.convolution, aten.linear, aten.matmul}


@dataclass
class Operand:
    op: str
    position: int
    shape: tuple
    zero_fraction: float
    digest: str
    in_ideal_module: bool
    sparse_as_dense: bool


def _digest(t: torch.Tensor) -> str:
    data = t.detach().contiguous().cpu()
    return hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()


class _OperandRecorder(TorchDispatchMode):
    def __init__(self, calls: list[list[Operand]], in_ideal: Callable[[], bool]) -> None:
        super().__init__()
        self.calls, self.in_ideal = calls, in_ideal

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in MATMUL_OPS:
            ops = []
            for i, a in enumerate(args):
                if (isinstance(a, torch.Tensor) and a.layout == torch.strided and a.is_floating_point()
                        and a.numel() >= MIN_NUMEL):
                    ops.append(Operand(func.overloadpacket.__name__, i, tuple(a.shape), zero_fraction(a), _digest(a),
                                       self.in_ideal(), a.dim() >= 2 and is_sparse_as_dense(a)))
            self.calls.append(ops)
        return out


def matmul_operands(model: nn.Module, inputs: Any) -> list[list[Operand]]:
    """Operands of each matmul/convolution in one no-grad forward, in call order."""
    depth = [0]
    handles = []
    for m in model.modules():
        if callable(getattr(m, "ideal_flops", None)):
            handles.append(m.register_forward_pre_hook(lambda *a: depth.__setitem__(0, depth[0] + 1)))
            handles.append(m.register_forward_hook(lambda *a: depth.__setitem__(0, depth[0] - 1)))
    calls: list[list[Operand]] = []
    try:
        with torch.no_grad(), _OperandRecorder(calls, lambda: depth[0] > 0):
            Inputs.of(inputs).call(model)
    finally:
        for h in handles:
            h.remove()
    return calls


@dataclass
class SparseAsDense:
    """A weight-like (input-independent) matmul operand that is mostly zeros."""

    op: str
    shape: tuple
    zero_fraction: float


def sparse_as_dense_operands(model: nn.Module, inputs_a: Any, inputs_b: Any) -> list[SparseAsDense]:
    """Operands identical under two different inputs (so they come from the weights, not the
    data) that are mostly zeros and are not inside a module that declares `ideal_flops`."""
    seen_a = {o.digest for call in matmul_operands(model, inputs_a) for o in call}
    found: dict[tuple, SparseAsDense] = {}
    for call in matmul_operands(model, inputs_b):
        for o in call:
            if o.digest in seen_a and o.sparse_as_dense and not o.in_ideal_module:
                found.setdefault((o.op, o.shape, o.digest), SparseAsDense(o.op, o.shape, o.zero_fraction))
    return list(found.values())


def state_dict_bytes(state: dict[str, Any]) -> int:
    """Bytes of a state_dict's tensors (sparse: values and indices), each (storage, offset, shape) once."""
    from ..measure.params import sparse_parts

    seen: set[tuple] = set()
    total = 0
    for value in state.values():
        if not isinstance(value, torch.Tensor):
            continue
        indices, values = sparse_parts(value)
        for t in [*indices, values]:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total
