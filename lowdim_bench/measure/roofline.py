"""Roofline: what this device can attain, and how close a timed call came to it.

Why: latency alone does not say whether a method is slow because of its math (many FLOPs, many
bytes) or because of its kernels (a sparse kernel doing few FLOPs slowly). A short calibration
measures the device's attainable matmul throughput and memory bandwidth; a timed call's bound is
then `max(FLOPs / peak FLOP/s, bytes / peak B/s)`, and `fraction = bound / measured p50` says how
much of the attainable rate the method's kernels reached (1.0 = on the roofline).

Calibration (CPU about 1-3 s, cached, so once per device):
- matmul: square float32 `torch.mm` at a few sizes, each timed per call; the attainable figure
  is the best call, `2 n^3 / seconds`, over all sizes.
- bandwidth: float32 buffers well above the last-level cache; `dst.copy_(src)` counts
  `2 x bytes` (read + write, STREAM "copy"), `src.sum()` counts `1 x bytes` (read only); the
  attainable figure is the best of the two.
The cache lives in LOWDIM_BENCH_CACHE/roofline/, one JSON per (device name, torch version,
threads, device type): a different thread count is a different roofline.

Bytes moved (a lower bound on traffic, so the bound is optimistic and the fraction at most ~1):
- inference: every stored byte of the model once (parameters and buffers, sparse values and
  indices: `count_params(...).stored_bytes`) + the input tensors + the output tensors;
- training step: stored bytes twice (forward and backward read them), plus the gradient bytes
  written, plus the optimizer's traffic: it reads the gradient and reads and writes every trainable
  parameter and every optimizer-state tensor (AdamW: 7 x the trainable bytes), plus inputs.
Activations are not counted (as if every intermediate stayed in cache).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..api import Inputs
from ..core.environment import cache_dir, device_name
from .params import count_params

CPU_MATMUL_SIZES = (256, 512, 1024)
CUDA_MATMUL_SIZES = (2048, 4096, 8192)
CPU_BANDWIDTH_BYTES = 128 * 2**20  # 4 x a 32 MiB L3; sized up from the LLC when it is larger
CUDA_BANDWIDTH_BYTES = 1024 * 2**20
MAX_BANDWIDTH_BYTES = 1024 * 2**20


@dataclass
class Calibration:
    """Attainable rates of one device at one thread count."""

    device_name: str
    device_type: str
    torch_version: str
    threads: int
    matmul_flops: float  # FLOP/s, best float32 matmul call
    bandwidth: float  # B/s, best of copy and read
    copy_bandwidth: float  # B/s, dst.copy_(src), 2 x bytes per call
    read_bandwidth: float  # B/s, src.sum(), 1 x bytes per call
    matmul_size: int  # n of the best n x n matmul
    buffer_bytes: int  # size of one bandwidth buffer
    seconds: float  # how long the calibration took
    measured_at: str

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/B) above which a call is compute-bound."""
        return self.matmul_flops / self.bandwidth


@dataclass
class Bound:
    """A timed call against the roofline."""

    flops: float
    bytes: float
    seconds: float  # max(flops / matmul_flops, bytes / bandwidth)
    intensity: float  # flops / bytes
    compute_bound: bool  # intensity above the ridge
    fraction: float  # seconds / measured; nan when nothing was measured


# ---- calibration --------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], object], device: torch.device, calls: int, budget_s: float) -> float:
    """Fastest of up to `calls` single calls after one warm-up (synchronised on CUDA)."""
    fn()
    _sync(device)
    best, start = float("inf"), time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return best


def _llc_bytes() -> int:
    """The last-level cache size from sysfs (Linux), or 0 when unknown."""
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best


def measure(device: str | torch.device = "cpu", matmul_sizes: Iterable[int] | None = None,
            buffer_bytes: int | None = None, calls: int = 10, budget_s: float = 0.5) -> Calibration:
    """Measure the attainable matmul FLOP/s and memory bandwidth now, at the current thread count."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} asked for, but torch sees no CUDA device")
    sizes = tuple(matmul_sizes or (CUDA_MATMUL_SIZES if cuda else CPU_MATMUL_SIZES))
    if not sizes or any(int(n) < 1 for n in sizes):
        raise ValueError(f"matmul sizes must be positive integers, got {sizes!r}")
    if buffer_bytes is None:
        buffer_bytes = CUDA_BANDWIDTH_BYTES if cuda else min(MAX_BANDWIDTH_BYTES, max(CPU_BANDWIDTH_BYTES, 4 * _llc_bytes()))
    if buffer_bytes < 4:
        raise ValueError(f"buffer_bytes must be at least 4, got {buffer_bytes}")
    start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    best_flops, best_n = 0.0, sizes[0]
    for n in sizes:
        a = torch.rand(n, n, generator=g).to(dev)
        b = torch.rand(n, n, generator=g).to(dev)
        out = torch.empty(n, n, device=dev)
        rate = 2.0 * n**3 / _best_seconds(lambda: torch.mm(a, b, out=out), dev, calls, budget_s)
        if rate > best_flops:
            best_flops, best_n = rate, n
        del a, b, out
    elems = buffer_bytes // 4
    src = torch.ones(elems, device=dev)
    dst = torch.empty(elems, device=dev)
    nbytes = elems * 4
    copy_bw = 2.0 * nbytes / _best_seconds(lambda: dst.copy_(src), dev, calls, budget_s)
    read_bw = 1.0 * nbytes / _best_seconds(lambda: src.sum(), dev, calls, budget_s)
    del src, dst
    return Calibration(
        device_name=device_name(str(dev)), device_type=dev.type, torch_version=torch.__version__,
        threads=torch.get_num_threads(), matmul_flops=best_flops, bandwidth=max(copy_bw, read_bw),
        copy_bandwidth=copy_bw, read_bandwidth=read_bw, matmul_size=int(best_n), buffer_bytes=nbytes,
        seconds=time.perf_counter() - start, measured_at=dt.datetime.now().isoformat(timespec="seconds"))


# ---- the per-device cache -------------------------------------------------------------------

def cache_key(device_name: str, device_type: str, torch_version: str, threads: int) -> str:
    blob = json.dumps({"device": device_name, "type": device_type, "torch": torch_version, "threads": int(threads)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(device: str | torch.device, threads: int | None = None) -> Path:
    dev = torch.device(device)
    key = cache_key(device_name(str(dev)), dev.type, torch.__version__, threads or torch.get_num_threads())
    return cache_dir() / "roofline" / f"{key}.json"


def load(device: str | torch.device = "cpu", threads: int | None = None) -> Calibration | None:
    """The cached calibration for this device, torch version and thread count, or None."""
    path = cache_path(device, threads)
    try:
        return Calibration(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # missing, torn or from an older layout: calibrate again


def calibrate(device: str | torch.device = "cpu", threads: int | None = None, refresh: bool = False,
              **measure_kw: Any) -> Calibration:
    """The cached calibration, measuring it first when absent (or when `refresh`).

    `threads` sets torch's thread count for the measurement and is restored afterwards, so the
    caller's process is left as it was.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"thread count must be at least 1, got {threads}")
    if not refresh:
        hit = load(device, threads)
        if hit is not None:
            return hit
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        cal = measure(device, **measure_kw)
    finally:
        torch.set_num_threads(before)
    path = cache_path(device, cal.threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(cal), indent=1))
    os.replace(tmp, path)
    return cal


# ---- bytes moved and the bound --------------------------------------------------------------

def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a (nested) tuple/list/dict of outputs or inputs."""
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:
            return count_params(_Holder(obj)).stored_bytes
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(o) for o in obj.values())
    if isinstance(obj, Inputs):
        return tensor_bytes(obj.args) + tensor_bytes(obj.kwargs)
    return 0


class _Holder(nn.Module):
    def __init__(self, t: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("t", t)


def inference_bytes(model: nn.Module, inputs: Any, outputs: Any) -> int:
    """Stored bytes of the model (values and indices) + input bytes + output bytes."""
    return count_params(model).stored_bytes + tensor_bytes(inputs) + tensor_bytes(outputs)


def train_step_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None, inputs: Any) -> int:
    """2 x stored bytes + gradients written + optimizer traffic (read grad, read/write params and state) + inputs.

    Optimizer state is read from `optimizer.state` as it is now (take it after a step, so lazily
    created state exists); with no optimizer only the forward/backward reads and the gradients count.
    """
    stored = count_params(model).stored_bytes
    train = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    grads = sum(tensor_bytes(p.detach()) for p in train)
    state = 0
    if optimizer is not None:
        state = sum(tensor_bytes(v) for s in optimizer.state.values() for v in s.values()
                    if isinstance(v, torch.Tensor) and v.numel() > 1)  # per-tensor step scalars left out
        opt_traffic = grads + 2 * grads + 2 * state  # read grad, read+write param, read+write state
    else:
        opt_traffic = 0
    return 2 * stored + grads + opt_traffic + tensor_bytes(inputs)


def bound(flops: float, nbytes: float, cal: Calibration, measured_s: float | None = None) -> Bound:
    """The roofline time of a call and the fraction of it a measured time reached."""
    if flops < 0 or nbytes < 0:
        raise ValueError(f"FLOPs and bytes must be >= 0, got flops={flops}, bytes={nbytes}")
    if cal.matmul_flops <= 0 or cal.bandwidth <= 0:
        raise ValueError(f"calibration has non-positive rates: {cal.matmul_flops} FLOP/s, {cal.bandwidth} B/s")
    seconds = max(flops / cal.matmul_flops, nbytes / cal.bandwidth)
    intensity = flops / nbytes if nbytes > 0 else float("inf")
    fraction = seconds / measured_s if measured_s and measured_s > 0 else float("nan")
    return Bound(flops=float(flops), bytes=float(nbytes), seconds=seconds, intensity=intensity,
                 compute_bound=intensity > cal.ridge, fraction=fraction)
