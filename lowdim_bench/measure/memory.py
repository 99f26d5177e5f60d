"""Peak tensor memory of a training step or an inference call, split by what the bytes are for.

Why our own tracker: torch's private MemTracker hooks every parameter, so it crashes on frozen
parameters (LoRA) and refuses a second tracked step. This one watches storages through a
TorchDispatchMode (every ATen op's outputs; first-seen inputs are pre-existing tensors), learns
when a storage dies through a weak reference, and names gradients with a post-accumulate-grad
hook on trainable parameters only. Everything it installs is removed when a measurement ends.

Sizes are storage bytes (`UntypedStorage.nbytes`), each storage counted once however many views
share it. Allocator overhead (rounding, caching, fragmentation) is not visible here: compare
`process_peak` (CPU) or `cuda_reserved_peak` (CUDA) for that. docs/measurement.md has the protocol.
"""
from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..api import Inputs
from .latency import eval_mode

CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "other")

# Optimizer-state tensors per trainable parameter element, for the analytic figure.
_STATE_PER_PARAM = {"adam": 2, "adamw": 2, "sgd": 0, "sgd_momentum": 1, "rmsprop": 1, "adagrad": 1}


@dataclass
class MemoryBreakdown:
    """Live tensor bytes at the moment of the peak, split into categories (peak == their sum).

    parameters: model parameters and buffers (sparse indices included); gradients: `.grad` of
    trainable parameters; optimizer: tensors held in `optimizer.state`; activations: tensors made
    during forward and backward that are not gradients (saved tensors and backward temporaries);
    other: inputs, other pre-existing tensors and the working buffers of `optimizer.step`.
    `peak_phase` says where the peak fell: start, zero_grad, forward, backward or optimizer.
    `activations_max` is the most activation bytes alive at any moment of the step: when the
    peak falls in the optimizer step the split shows almost no activations, yet this figure is
    what a method that saves less for backward (LoRA, SLTrain's rebuild) changes.
    """

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    other: int
    peak: int
    process_peak: int | None = None
    cuda_allocated_peak: int | None = None
    cuda_reserved_peak: int | None = None
    peak_phase: str = ""
    activations_max: int = 0


def tensor_storages(t: torch.Tensor) -> list[torch.UntypedStorage]:
    """The storages holding a tensor's data; sparse layouts have several (indices and values)."""
    layout = t.layout
    if layout == torch.sparse_coo:
        parts = [t._indices(), t._values()]
    elif layout in (torch.sparse_csr, torch.sparse_bsr):
        parts = [t.crow_indices(), t.col_indices(), t.values()]
    elif layout in (torch.sparse_csc, torch.sparse_bsc):
        parts = [t.ccol_indices(), t.row_indices(), t.values()]
    else:
        try:
            return [t.untyped_storage()]
        except (NotImplementedError, RuntimeError):  # tensors without storage (nested, functional)
            return []
    return [s for p in parts for s in tensor_storages(p)]


class _Record:
    __slots__ = ("ref", "nbytes", "category", "serial")

    def __init__(self, ref: weakref.ref, nbytes: int, category: str, serial: int) -> None:
        self.ref, self.nbytes, self.category, self.serial = ref, nbytes, category, serial


class _Tracker:
    """Live bytes per category and a snapshot of the split at the highest total seen.

    Every storage gets a serial number at registration. A storage re-labelled later (a new
    tensor that turns out to be a gradient or optimizer state) that was registered before the
    peak and is still alive was alive at the peak, so the snapshot is corrected as well.
    """

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.records: dict[int, _Record] = {}
        self.totals = dict.fromkeys(CATEGORIES, 0)
        self.current = 0
        self.serial = 0
        self.phase = "start"
        self.new_category = "other"  # category of storages first seen as an op output now
        self.peak = 0
        self.peak_split = dict(self.totals)
        self.peak_serial = 0
        self.peak_phase = "start"
        self.activations_max = 0

    # --- registration -------------------------------------------------------------------
    def add(self, t: torch.Tensor, category: str, *, pre_existing: bool = False) -> None:
        for st in tensor_storages(t):
            self._add_storage(st, category, pre_existing)

    def _add_storage(self, st: torch.UntypedStorage, category: str, pre_existing: bool) -> None:
        if st.device.type != self.device_type:
            return
        key = id(st)
        rec = self.records.get(key)
        if rec is not None and rec.ref() is st:
            self._resized(rec, st.nbytes())
            return
        nbytes = st.nbytes()
        self.serial += 1
        serial = 0 if pre_existing else self.serial
        rec = _Record(weakref.ref(st, self._freed_callback(key)), nbytes, category, serial)
        self.records[key] = rec
        self.totals[category] += nbytes
        self.current += nbytes
        if pre_existing and self.peak > 0:
            # Alive all along, so alive at the peak too: the peak grows by the same bytes.
            self.peak += nbytes
            self.peak_split[category] += nbytes
        self._check_peak()

    def _freed_callback(self, key: int) -> Callable[[weakref.ref], None]:
        def freed(ref: weakref.ref) -> None:
            rec = self.records.get(key)
            if rec is None or rec.ref is not ref:
                return
            del self.records[key]
            self.totals[rec.category] -= rec.nbytes
            self.current -= rec.nbytes

        return freed

    def _resized(self, rec: _Record, nbytes: int) -> None:
        if nbytes != rec.nbytes:
            self.totals[rec.category] += nbytes - rec.nbytes
            self.current += nbytes - rec.nbytes
            rec.nbytes = nbytes
            self._check_peak()

    def _check_peak(self) -> None:
        self.activations_max = max(self.activations_max, self.totals["activations"])
        if self.current > self.peak:
            self.peak = self.current
            self.peak_split = dict(self.totals)
            self.peak_serial = self.serial
            self.peak_phase = self.phase

    def relabel(self, t: torch.Tensor, category: str) -> None:
        for st in tensor_storages(t):
            rec = self.records.get(id(st))
            if rec is None or rec.ref() is not st:
                self._add_storage(st, category, pre_existing=False)
                continue
            if rec.category == category:
                continue
            self.totals[rec.category] -= rec.nbytes
            self.totals[category] += rec.nbytes
            if rec.serial <= self.peak_serial:
                self.peak_split[rec.category] -= rec.nbytes
                self.peak_split[category] += rec.nbytes
            rec.category = category

    # --- what the dispatch mode reports ------------------------------------------------------
    def saw_input(self, t: torch.Tensor) -> None:
        for st in tensor_storages(t):
            rec = self.records.get(id(st))
            if rec is None or rec.ref() is not st:
                self._add_storage(st, "other", pre_existing=True)

    def saw_output(self, t: torch.Tensor) -> None:
        for st in tensor_storages(t):
            self._add_storage(st, self.new_category, pre_existing=False)

    def set_phase(self, phase: str, new_category: str) -> None:
        self.phase, self.new_category = phase, new_category

    def result(self) -> MemoryBreakdown:
        return MemoryBreakdown(**self.peak_split, peak=self.peak, peak_phase=self.peak_phase,
                               activations_max=self.activations_max)

    def close(self) -> None:
        """Drop the weak references so their callbacks never run after the measurement."""
        self.records.clear()


class _TrackingMode(TorchDispatchMode):
    def __init__(self, tracker: _Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                self.tracker.saw_input(leaf)
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.tracker.saw_output(leaf)
        return out


# --- whole-process and CUDA allocator peaks --------------------------------------------------
def _reset_process_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_process_peak() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cuda_reset(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _cuda_peaks(device: torch.device) -> tuple[int | None, int | None]:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    return None, None


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in _model_tensors(model):
        return t.device
    return torch.device("cpu")


def _model_tensors(model: nn.Module) -> Iterable[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in tree_leaves(state) if isinstance(v, torch.Tensor)]


class _Session:
    """One tracked region: tracker, dispatch mode, process and CUDA peaks; undone on exit."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.tracker = _Tracker(device.type)
        for t in _model_tensors(model):
            self.tracker.add(t, "parameters")
        self.mode = _TrackingMode(self.tracker)
        self.process_reset = False

    def __enter__(self) -> "_Session":
        gc.collect()
        _cuda_reset(self.device)
        self.process_reset = _reset_process_peak()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)

    def finish(self) -> MemoryBreakdown:
        result = self.tracker.result()
        result.process_peak = _read_process_peak() if self.process_reset else None
        result.cuda_allocated_peak, result.cuda_reserved_peak = _cuda_peaks(self.device)
        self.tracker.close()
        return result


def _full_step(step_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
               tracker: _Tracker | None = None) -> None:
    def phase(name: str, category: str) -> None:
        if tracker is not None:
            tracker.set_phase(name, category)

    phase("zero_grad", "other")
    optimizer.zero_grad(set_to_none=True)
    phase("forward", "activations")
    loss = step_fn()
    phase("backward", "activations")
    loss.backward()
    phase("optimizer", "other")  # working buffers; state is relabelled after the step
    optimizer.step()
    phase("end", "other")


def measure_train_step(model: nn.Module, step_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                       warmup_steps: int = 1, device: torch.device | str | None = None) -> MemoryBreakdown:
    """Peak memory of one full training step, after `warmup_steps` untracked ones.

    The warm-up makes lazily created optimizer state exist before the tracked step; state
    created inside the tracked step (warmup_steps=0) is still counted as optimizer. The steps
    update the weights and optimizer state as real training steps do: pass copies if that matters.
    """
    dev = _model_device(model, device)
    for _ in range(warmup_steps):
        _full_step(step_fn, optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    session = _Session(model, dev)
    tracker = session.tracker
    for t in _state_tensors(optimizer):
        tracker.add(t, "optimizer")
    for p in trainable:
        if p.grad is not None:
            tracker.add(p.grad, "gradients")

    def grad_ready(p: torch.Tensor) -> None:
        if p.grad is not None:
            tracker.relabel(p.grad, "gradients")

    handles = [p.register_post_accumulate_grad_hook(grad_ready) for p in trainable]
    try:
        with session:
            _full_step(step_fn, optimizer, tracker)
        for p in trainable:  # gradients set without autograd (rare) still count as gradients
            if p.grad is not None:
                tracker.relabel(p.grad, "gradients")
        for t in _state_tensors(optimizer):
            tracker.relabel(t, "optimizer")
        return session.finish()
    finally:
        for h in handles:
            h.remove()
        tracker.close()


def measure_inference(model: nn.Module, inputs: tuple | Inputs,
                      device: torch.device | str | None = None) -> MemoryBreakdown:
    """Peak memory of one forward call in eval mode under torch.no_grad (no gradients, no optimizer)."""
    dev = _model_device(model, device)
    session = _Session(model, dev)
    inputs = Inputs.of(inputs)
    for leaf in tree_leaves((inputs.args, inputs.kwargs)):
        if isinstance(leaf, torch.Tensor):
            session.tracker.add(leaf, "other")
    session.tracker.set_phase("forward", "activations")
    try:
        with eval_mode(model), torch.no_grad(), session:
            inputs.call(model)
        return session.finish()
    finally:
        session.tracker.close()


def _unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        for st in tensor_storages(t):
            seen[id(st)] = st.nbytes()
    return sum(seen.values())


def analytic_train_memory(model: nn.Module, optimizer_name: str = "adamw") -> dict[str, int]:
    """Expected bytes of weights, gradients (trainable only) and optimizer state (Adam: 2 x trainable).

    Shown beside the measured split; Adam's per-parameter step scalars are left out.
    """
    name = optimizer_name.lower()
    if name not in _STATE_PER_PARAM:
        raise ValueError(f"unknown optimizer {optimizer_name!r}; known: {sorted(_STATE_PER_PARAM)}")
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    grads = sum(p.numel() * p.element_size() for p in trainable if p.layout == torch.strided)
    grads += sum(p._values().numel() * p.element_size() for p in trainable if p.layout == torch.sparse_coo)
    weights = _unique_bytes(_model_tensors(model))
    optim = _STATE_PER_PARAM[name] * grads
    return {"parameters": weights, "gradients": grads, "optimizer": optim, "total": weights + grads + optim}
