"""A process of a run (a cell's worker, the interleave pass) dies with the process that started it.

Why: a runner killed with SIGKILL cannot clean up, and a hung worker with no parent has no time
limit left. The kernel kills the child when its parent dies (PR_SET_PDEATHSIG, Linux) and a
watchdog thread checks the parent pid once a second (any POSIX system). A cell forked from a warm
server (run/warm.py) dies with the server, which dies with the run.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, via: int | None = None, watchdog: bool = True) -> None:
    """A worker must not outlive the run that started it (a killed parent leaves no hung worker):
    the kernel kills it when its parent dies (Linux), and a watchdog thread checks too. `parent`
    is the pid the parent gave us: it may have died while we were still importing. `via`: the
    process that forked us when that is not `parent` (a warm server, run/warm.py, which dies with
    `parent` in turn); we then die with it. A process that forks (the server) takes no thread."""
    direct = via or parent
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass
    if os.getppid() != direct or not _alive(parent):  # died before the prctl took effect
        os._exit(1)
    if not watchdog:
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != direct:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
