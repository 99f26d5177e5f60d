"""Run inside a warm cell process by tests/test_warm.py: what did the child inherit from its server?"""
from __future__ import annotations

import os
import sys


def probe(queue) -> None:
    import torch

    from lowdim_bench.run import warm

    registry = warm.preloaded_registry()
    queue.put({
        "pid": os.getpid(), "ppid": os.getppid(),
        "preloaded": "lowdim_bench.run.preload" in sys.modules,
        "methods": sorted(registry.methods) if registry is not None else None,
        "cuda_initialised": torch.cuda.is_initialized(),
        "textual": any(m == "textual" or m.startswith("textual.") for m in sys.modules),
        "dynamo": "torch._dynamo" in sys.modules,
        "env": os.environ.get("WARM_PROBE_VALUE"),
        "server_python_threads": getattr(sys.modules.get("lowdim_bench.run.preload"), "PYTHON_THREADS", None),
    })


def cuda_probe(queue) -> None:
    """A warm child's first CUDA work: possible only if its server never initialised CUDA."""
    import torch

    bad_fork = torch.cuda._is_in_bad_fork()
    try:
        value = float(torch.ones(3, device="cuda").sum().item())
    except Exception as exc:  # reported to the test, not lost in a dead child
        value = f"{type(exc).__name__}: {exc}"
    queue.put({"value": value, "bad_fork": bad_fork})


def modules_probe(queue, names) -> None:
    """Which of `names` the child found imported (inherited from its server)."""
    queue.put({n: n in sys.modules for n in names} | {"ppid": os.getppid()})
