"""What a warm server (run/warm.py) imports once, before it forks any cell: torch, the worker and
everything it imports, the registry with every plugin, and the modules the run's tasks and
methods name in `preload` (transformers, peft). Imported in a server only, never in a
runner or a cell process; a forked cell finds the results here (`REGISTRY`).

Rules kept here: the server computes nothing and never initialises CUDA (a plugin's import-time
`torch.cuda.is_available()` is answered through NVML, which does not initialise the driver),
and it dies with the process that started it.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
from multiprocessing import forkserver
from typing import Any

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
# Heavy modules every cell imports lazily on its first training step or measurement (optimizers pull
# in torch._dynamo and sympy; the FLOP counter): about 900 modules. Not scikit-learn or scipy: they
# would add 2 s before the first cell, and only some plugins' cells use them.
LAZY_IMPORTS = ("torch._dynamo", "torch.utils.flop_counter", "torch.profiler")


def _server_argument(name: str) -> Any:
    """An argument of the stdlib server's main() that called this import: `sys_path` (the starting
    process's, which 3.11 does not apply, so plugins import from the same places as in a spawned
    worker) or `preload` (the list this module is the first of)."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return frame.f_locals.get(name)
        frame = frame.f_back
    return None


def _import_extras(names: list[str]) -> None:
    """The plugins' `preload` modules (warm.EXTRA + name). Imported here rather than by the stdlib,
    which stops the server on any error but ImportError: a broken module is the cell's to report."""
    from .warm import EXTRA

    for name in names:
        if isinstance(name, str) and name.startswith(EXTRA):
            try:
                importlib.import_module(name[len(EXTRA):])
            except Exception:
                pass


def _load(extras: list[str]) -> tuple[object, bool]:
    from ..registry import Registry

    saved = os.environ.get(NVML_CHECK)
    os.environ[NVML_CHECK] = "1"
    try:
        import torch

        from ..measure import flops, latency, memory, params  # noqa: F401 - the metrics use them
        from . import worker  # noqa: F401 - and everything the worker imports
        for name in LAZY_IMPORTS:
            try:
                importlib.import_module(name)
            except Exception:  # an optional extra that is not installed: the cell imports what it needs
                pass
        try:
            registry = Registry.load()
        except BaseException:  # the child loads it itself and reports what is wrong
            registry = None
        _import_extras(extras)
        return registry, torch.cuda.is_initialized()
    finally:
        if saved is None:
            del os.environ[NVML_CHECK]
        else:
            os.environ[NVML_CHECK] = saved


from . import lifetime  # noqa: E402 - the standard library only: armed before the heavy imports

# No thread: a server that forks must stay single-threaded. Should the run die before the prctl, the
# stdlib server still exits once it sees its alive pipe closed, after these imports.
lifetime.die_with_parent(os.getppid(), watchdog=False)
SERVER_PID = os.getpid()  # a forked cell's direct parent (warm.server_pid)
_path = _server_argument("sys_path")
if _path:
    sys.path[:] = _path
REGISTRY, CUDA_INITIALISED = _load(_server_argument("preload") or [])
# Python threads in the server after its imports: must stay 1 (native library threads, torch's and
# polars', do not hold Python state and are not copied into a forked child).
PYTHON_THREADS = threading.active_count()
