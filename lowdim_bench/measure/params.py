"""Parameter counts and stored bytes of a model, with sparse values and indices counted honestly.

Why not `sum(p.numel())`: a torch sparse tensor's numel() is its dense size, a tied weight
appears under two names, frozen factors kept as buffers are stored but are not parameters, and
an int64 support index can weigh more than the values it locates. Budgets are compared on
these figures, so each one is defined once, here (see docs/measurement.md, "Parameters").
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

_COMPRESSED = {
    torch.sparse_csr: ("crow_indices", "col_indices"),
    torch.sparse_bsr: ("crow_indices", "col_indices"),
    torch.sparse_csc: ("ccol_indices", "row_indices"),
    torch.sparse_bsc: ("ccol_indices", "row_indices"),
}


@dataclass
class ParamCount:
    """What a model holds. Elements are counted once per tensor, bytes once per storage byte.

    total / trainable: unique parameter elements (a sparse parameter counts its stored values).
    stored: parameter elements plus floating-point buffer elements (frozen factors, bases).
    Only persistent buffers count: non-persistent ones (rotary tables, causal masks) are caches
    rebuilt from the code, not state a checkpoint stores.
    stored_bytes: bytes of parameters and buffers, each storage byte once (tied or aliased
    tensors once), including integer/bool buffers and sparse index arrays; index_bytes is
    that non-value share.
    """

    total: int
    trainable: int
    stored: int
    stored_bytes: int
    index_bytes: int
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _is_value_dtype(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


def sparse_parts(t: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(index tensors, values tensor) of a sparse tensor; ([], t) for a strided one."""
    if t.layout == torch.strided:
        return [], t
    if t.layout == torch.sparse_coo:
        return [t._indices()], t._values()
    if t.layout in _COMPRESSED:
        a, b = _COMPRESSED[t.layout]
        return [getattr(t, a)(), getattr(t, b)()], t.values()
    raise TypeError(f"count_params: unsupported tensor layout {t.layout}")


def stored_elements(t: torch.Tensor) -> int:
    """Elements a tensor actually stores: numel for strided, the values for sparse layouts."""
    return sparse_parts(t)[1].numel()


def _storage_key(t: torch.Tensor) -> tuple:
    if t.device.type == "meta":  # meta tensors have no data pointer to share
        return ("meta", id(t))
    return (str(t.device), t.untyped_storage().data_ptr())


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[start, end) bytes of a tensor's storage that its elements reach."""
    size = t.element_size()
    start = t.storage_offset() * size
    if t.numel() == 0:
        return start, start
    last = sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
    return start, start + (last + 1) * size


def _cover(spans: list[list[int]], lo: int, hi: int) -> int:
    """Add [lo, hi) to a sorted list of disjoint spans in place; return the bytes newly covered."""
    new = hi - lo
    merged_lo, merged_hi = lo, hi
    keep = []
    for a, b in spans:
        if b < lo or a > hi:
            keep.append([a, b])
            continue
        new -= max(0, min(b, hi) - max(a, lo))
        merged_lo, merged_hi = min(merged_lo, a), max(merged_hi, b)
    keep.append([merged_lo, merged_hi])
    spans[:] = sorted(keep)
    return max(new, 0)


class _StorageTally:
    """Adds up the bytes tensors occupy, each storage byte once.

    Counting the byte span each tensor reaches (not whole storages) keeps tied weights and
    views once, yet does not charge a tensor for storage it merely shares: a CSR built from
    COO keeps its col_indices as a view of the (2, nnz) COO index storage.
    """

    def __init__(self) -> None:
        self.spans: dict[tuple, list[list[int]]] = {}
        self.index_bytes = 0
        self.by_dtype: dict[str, int] = {}

    def _add(self, t: torch.Tensor, as_index: bool) -> int:
        """Tally one strided tensor; return the value elements it added."""
        nbytes = _cover(self.spans.setdefault(_storage_key(t), []), *_byte_span(t))
        name = _dtype_name(t.dtype)
        self.by_dtype[name] = self.by_dtype.get(name, 0) + nbytes
        if as_index:
            self.index_bytes += nbytes
            return 0
        return nbytes // t.element_size()

    def add(self, t: torch.Tensor, is_parameter: bool) -> int:
        """Tally a tensor's storages (values and any sparse indices); return new value elements."""
        indices, values = sparse_parts(t)
        for ix in indices:
            self._add(ix, as_index=True)
        # Integer parameters (e.g. int8 codes held as a frozen Parameter) are still parameters;
        # integer or bool buffers (indices, masks, codes) are structure, counted in bytes only.
        return self._add(values, as_index=not (is_parameter or _is_value_dtype(values.dtype)))


def _unique_tensors(tensors: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def named_persistent_buffers(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for prefix, m in model.named_modules():
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent_buffers_set:
                yield (f"{prefix}.{name}" if prefix else name), b


def persistent_buffers(model: nn.Module) -> Iterator[torch.Tensor]:
    for _, b in named_persistent_buffers(model):
        yield b


def count_params(model: nn.Module, include: Callable[[str], bool] | None = None) -> ParamCount:
    """Count a model's parameters, stored elements and stored bytes (see ParamCount).

    `include` keeps only the tensors whose name in the model it accepts (a task's budget scope,
    e.g. all but the embeddings); a tied tensor goes by the first name it is registered under."""
    keep = include or (lambda name: True)
    params = _unique_tensors(p for n, p in model.named_parameters() if keep(n))
    buffers = _unique_tensors(b for n, b in named_persistent_buffers(model) if keep(n))
    total = sum(stored_elements(p) for p in params)
    trainable = sum(stored_elements(p) for p in params if p.requires_grad)
    tally = _StorageTally()
    for p in params:
        tally.add(p, is_parameter=True)
    # Buffers add only storages no parameter holds (a buffer aliasing a weight is not extra).
    buffer_values = sum(tally.add(b, is_parameter=False) for b in buffers)
    return ParamCount(
        total=total,
        trainable=trainable,
        stored=total + buffer_values,
        stored_bytes=sum(tally.by_dtype.values()),
        index_bytes=tally.index_bytes,
        bytes_by_dtype=dict(sorted(tally.by_dtype.items())),
    )


def serialised_bytes(model: nn.Module) -> int:
    """Size of `torch.save(model.state_dict())`: persistent state only, with pickle overhead."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes
