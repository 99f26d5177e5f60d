"""Where a measurement came from: every record carries these fields."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def git_revision(start: Path | None = None) -> str | None:
    """The checkout's revision (with '-dirty' when it has changes), or None outside git."""
    cwd = start or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cache_dir() -> Path:
    """Where cached base models and calibrations live (outside the repository)."""
    root = os.environ.get("LOWDIM_BENCH_CACHE") or Path.home() / ".cache" / "lowdim-bench"
    return Path(root)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def collect(device: str) -> dict[str, object]:
    try:
        import opt_einsum  # noqa: F401  - changes einsum contraction paths, so FLOPs and latency
        has_opt_einsum = True
    except ImportError:
        has_opt_einsum = False
    return {
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device_name": device_name(device),
        "cores": usable_cores(),
        "git_rev": git_revision(),
        "opt_einsum": has_opt_einsum,
    }


def resolve_device(device: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device: str) -> str:
    """The device resolved, or ValueError naming what is wrong (typo, no GPU, no such GPU)."""
    resolved = resolve_device(device)
    if resolved == "cpu":
        return resolved
    match = re.fullmatch(r"cuda(?::(\d+))?", resolved)
    if not match:
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: torch sees no CUDA device here")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return resolved
