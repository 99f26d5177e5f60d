"""Peak working memory of one call (a solver's solve): what the call itself allocated at its peak.

Why not measure/memory.py's tracker: that one splits a training step's peak into parameters,
gradients, optimizer state and activations, and counts the tensors that existed before the step
(the model) in the peak. A solve has no model; its inputs (the instance) exist before it and
belong to the problem, so here only what the call makes is counted:
- `tensors`: torch storages that are outputs of ATen ops during the call, alive together at the
  peak (a TorchDispatchMode sees every op; a weak reference says when a storage dies; sparse
  layouts count their index and value arrays);
- `python`: the tracemalloc peak, which numpy arrays report to, and Python objects;
- `cuda_allocated`: torch's CUDA allocator peak above its start, on a CUDA device.
The tracking slows the call (a Python callback per op, tracemalloc on every allocation), so
never time a tracked call: the harness times an untracked one and tracks a second, identical one.
`ProcessPeak` watches the untracked one at no cost: how far the process's peak resident set
rose above its size at the start (Linux, VmHWM reset through /proc/self/clear_refs), allocator
caching and fragmentation included, coarse (pages); None where the kernel refuses the reset.
"""
from __future__ import annotations

import gc
import tracemalloc
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .memory import _read_process_peak, _reset_process_peak, tensor_storages


@dataclass
class CallPeak:
    tensors: int
    python: int
    cuda_allocated: int | None = None

    @property
    def total(self) -> int:
        """Tensors plus Python/numpy peaks: an upper bound on their joint peak (the two peaks may
        fall at different moments)."""
        return self.tensors + self.python


class _NewTensors(TorchDispatchMode):
    """Live bytes of storages first seen as op outputs inside the mode, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.now = self.peak = 0

    def _freed(self, key: int) -> Callable[[weakref.ref], None]:
        def callback(ref: weakref.ref) -> None:
            hit = self.live.get(key)
            if hit is not None and hit[0] is ref:
                self.now -= self.live.pop(key)[1]
        return callback

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if not isinstance(leaf, torch.Tensor):
                continue
            for st in tensor_storages(leaf):
                hit = self.live.get(id(st))
                nbytes = st.nbytes()
                if hit is not None and hit[0]() is st:
                    if nbytes != hit[1]:  # resized in place (out= ops)
                        self.now += nbytes - hit[1]
                        self.live[id(st)] = (hit[0], nbytes)
                elif nbytes:
                    self.live[id(st)] = (weakref.ref(st, self._freed(id(st))), nbytes)
                    self.now += nbytes
            self.peak = max(self.peak, self.now)
        return out

    def close(self) -> None:
        self.live.clear()


def _rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class ProcessPeak:
    """`with ProcessPeak() as p: ...`, then `p.bytes`: the rise of the peak RSS over the block."""

    def __init__(self) -> None:
        self.bytes: int | None = None
        self._start: int | None = None
        self._reset = False

    def __enter__(self) -> "ProcessPeak":
        gc.collect()
        self._start = _rss()
        self._reset = _reset_process_peak()
        return self

    def __exit__(self, *exc: Any) -> None:
        hwm = _read_process_peak() if self._reset else None
        if hwm is not None and self._start is not None:
            self.bytes = max(0, hwm - self._start)


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, CallPeak]:
    """(fn(), the peak working memory of the call)."""
    device = torch.device(device)
    with _NewTensors():  # the first use of a dispatch mode imports modules: keep that out of the figure
        torch.zeros(2).add_(1)
    gc.collect()
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_start = torch.cuda.memory_allocated(device)
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base_traced, _ = tracemalloc.get_traced_memory()
    mode = _NewTensors()
    try:
        with mode:
            out = fn()
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        if started_tracing:
            tracemalloc.stop()
        mode.close()
    peak = CallPeak(tensors=mode.peak, python=max(0, traced_peak - base_traced))
    if cuda:
        torch.cuda.synchronize(device)
        peak.cuda_allocated = max(0, torch.cuda.max_memory_allocated(device) - cuda_start)
    return out, peak
