"""A process of a run (a cell's worker, the interleave pass) dies with the process that started it.

Why: a runner killed with SIGKILL cannot clean up, and a hung worker with no parent has no time
limit left. The kernel kills the child when its parent dies (PR_SET_PDEATHSIG, Linux) and a
watchdog thread checks the parent pid once a second (any POSIX system).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """A worker must not outlive the run that started it (a killed parent leaves no hung worker):
    the kernel kills it when its parent dies (Linux), and a watchdog thread checks too. `parent`
    is the pid the parent gave us: it may have died while we were still importing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()
