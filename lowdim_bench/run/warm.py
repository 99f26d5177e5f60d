"""Warm cell processes: still one fresh process per cell, but forked from a server that has
already imported torch, the registry and the plugins.

Why: a spawned worker starts an interpreter and imports everything again for every cell (torch
alone 1.5-2.4 s); the smoke suite's cells did 0.6-0.8 s of work in 4-5 s each. A process forked
from a warm server starts in milliseconds and is still a process of its own, so a crash, an
out-of-memory kill, a hang or a NaN fails that cell only, and it has run no other cell when its
memory is measured (its peak RSS starts from the imports, as a spawned worker's does).

How: multiprocessing's forkserver protocol (a server that forks on request and reports each
child's exit code back), with servers of our own instead of multiprocessing's single global one.
A child inherits its server's environment, sys.path and imported plugin code, so a server serves
one fingerprint of those; a run in another environment (other plugins, another PYTHONPATH, a GPU
set by CUDA_VISIBLE_DEVICES) or after plugin source changed gets a new server. The server
imports, it never computes: CUDA is not initialised there, so every child may use any GPU.
It dies with the process that started it (PR_SET_PDEATHSIG, in run/preload.py), and its
children die with it (run/lifetime.py).

`LOWDIM_BENCH_START=spawn` goes back to a spawned interpreter per cell (slow; for comparison,
or where a plugin cannot live with fork).
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import multiprocessing as mp
import os
import sys
import threading
from importlib import metadata
from multiprocessing import context as mp_context
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from pathlib import Path
from typing import Any

ENV_START = "LOWDIM_BENCH_START"
STARTS = ("warm", "spawn")
# Imported in every server before it forks: `preload` imports torch, the worker and the registry,
# then the plugins' own heavy modules, which ride in the list as names it recognises (EXTRA).
PRELOAD = ["lowdim_bench.run.preload"]
EXTRA = "lowdim-bench-extra:"  # not a module name: the stdlib's own import of it fails quietly
# Environment variables read while the server imports (plugin selection, the import path, thread
# pools and allocators set up at library load): a change needs another server. Every other
# variable is read at run time, and a child gets the starting process's current ones.
IMPORT_ENV = ("LOWDIM_BENCH_", "PYTHON", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "GOTO", "TORCH", "PYTORCH_", "LD_")
MAX_SERVERS = 3


def available() -> bool:
    return "forkserver" in mp.get_all_start_methods() and reduction.HAVE_SEND_HANDLE


def start_method(requested: str | None = None) -> str:
    """`warm` (the default where fork servers exist) or `spawn`; LOWDIM_BENCH_START overrides."""
    chosen = os.environ.get(ENV_START) or requested or "warm"
    if chosen not in STARTS:
        raise ValueError(f"{ENV_START}={chosen!r}: expected one of {', '.join(STARTS)}")
    return chosen if chosen == "spawn" or available() else "spawn"


def context(start: str | None = None, preload: tuple[str, ...] = ()) -> Any:
    """A multiprocessing context whose processes start the chosen way (a warm server is started now,
    so its imports overlap with whatever the caller does before its first process). `preload`:
    more modules the server imports before it forks (the cells' `Task.preload`/`Method.preload`:
    transformers alone took 5-8 s a cell); a server per distinct list."""
    if start_method(start) == "spawn":
        return mp.get_context("spawn")
    return WarmContext(fingerprint(), tuple(sorted(set(preload))))


def prestart() -> None:
    """Start this environment's server now, so its imports overlap with the caller's own start-up
    (the CLI loads the plugins meanwhile); the executor then finds it running."""
    if start_method() == "warm":
        server(fingerprint())


# ---- the server's identity --------------------------------------------------------------------

def _plugin_roots() -> set[str]:
    """Top-level modules whose code a cell runs: the harness, the built-ins and every plugin."""
    roots = {"lowdim_bench", "lowdim_bench_builtin"}
    roots |= {ep.value.split(":")[0].split(".")[0] for ep in metadata.entry_points(group="lowdim_bench")}
    roots |= {m.strip().split(".")[0] for m in os.environ.get("LOWDIM_BENCH_PLUGIN_MODULES", "").split(",")
              if m.strip()}
    return roots


def _source_files(root: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(root)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.py")]
    return [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []


def code_stamp() -> str:
    """Size and modification time of every source file of the harness and the plugins, so a server
    never forks a cell with code older than the files (a long-lived app, a Ray worker)."""
    digest = hashlib.sha256()
    for root in sorted(_plugin_roots()):
        for path in sorted(_source_files(root)):
            try:
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    return digest.hexdigest()[:16]


def fingerprint() -> str:
    """What a child inherits from its server: interpreter, sys.path, the environment its imports
    read, plugin source."""
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(IMPORT_ENV))
    blob = repr((sys.executable, sys.path, env, code_stamp()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- servers ------------------------------------------------------------------------------------

_servers: dict[str, forkserver.ForkServer] = {}  # fingerprint -> server, least recently used first
_retired: list[int] = []
_lock = threading.Lock()


def server(key: str, preload: tuple[str, ...] = ()) -> forkserver.ForkServer:
    """The running server for a fingerprint and preload list, started when there is none (it then
    imports in the background: the caller's first process waits for it, nothing else does). A
    preloaded module that fails to import is skipped (run/preload.py): the cell imports it itself."""
    key = key + "".join(f"+{m}" for m in preload)
    with _lock:
        srv = _servers.pop(key, None)
        if srv is None:
            srv = forkserver.ForkServer()
            srv.set_forkserver_preload(PRELOAD + [EXTRA + m for m in preload])
        _servers[key] = srv
        while len(_servers) > MAX_SERVERS:
            _retire(_servers.pop(next(iter(_servers))))
        _reap()
    srv.ensure_running()
    return srv


def _retire(srv: forkserver.ForkServer) -> None:
    """Ask a server to stop without waiting: it exits once its running children have (the stdlib's
    _stop would wait for them)."""
    if srv._forkserver_pid is not None:
        os.close(srv._forkserver_alive_fd)
        _retired.append(srv._forkserver_pid)
        srv._forkserver_pid = srv._forkserver_alive_fd = None


def _reap() -> None:
    for pid in list(_retired):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _retired.remove(pid)


# ---- the context, process and launcher ------------------------------------------------------------

class _WarmPopen(popen_forkserver.Popen):
    """multiprocessing's forkserver launcher, asking our server instead of the global one."""

    method = "forkserver"

    def _launch(self, process_obj: "WarmProcess") -> None:
        srv = server(process_obj.warm_key, process_obj.warm_preload)
        process_obj.warm_env = dict(os.environ)  # as a spawned child would see it (CUDA_VISIBLE_DEVICES, ...)
        prep_data = spawn.get_preparation_data(process_obj._name)
        # Our target never lives in __main__, so the child need not run the main script or module
        # again (a `python -m lowdim_bench.cli` or a pytest main would be re-executed per cell).
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        mp_context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            mp_context.set_spawning_popen(None)
        self.sentinel, w = srv.connect_to_new_process(self._fds)
        parent_w = os.dup(w)  # as the stdlib: the child's sentinel of its parent
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class WarmProcess(mp_context.ForkServerProcess):
    warm_key = ""  # set per instance by WarmContext; a plain string, so the process pickles
    warm_preload: tuple[str, ...] = ()
    warm_env: dict[str, str] | None = None  # the starting process's environment when it started this one

    @staticmethod
    def _Popen(process_obj: "WarmProcess") -> _WarmPopen:
        return _WarmPopen(process_obj)

    def run(self) -> None:
        if self.warm_env is not None:
            os.environ.clear()
            os.environ.update(self.warm_env)
        super().run()


class WarmContext(mp_context.ForkServerContext):
    """Like mp.get_context("forkserver"), with this module's server for one fingerprint."""

    def __init__(self, key: str, preload: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.key, self.preload = key, preload
        server(key, preload)  # start importing now

    def Process(self, *args: Any, **kwargs: Any) -> WarmProcess:  # noqa: N802 - multiprocessing's name
        proc = WarmProcess(*args, **kwargs)
        proc.warm_key, proc.warm_preload = self.key, self.preload
        return proc


# ---- inside a child -------------------------------------------------------------------------------

def server_pid() -> int | None:
    """The pid of the warm server that forked this child (its direct parent), or None (spawned)."""
    preload = sys.modules.get("lowdim_bench.run.preload")
    return getattr(preload, "SERVER_PID", None)


def preloaded_registry() -> Any:
    """The registry the warm server loaded (inherited by this forked child), or None (spawned)."""
    preload = sys.modules.get("lowdim_bench.run.preload")
    return getattr(preload, "REGISTRY", None)


def child_problem(device: str) -> str | None:
    """Why this child cannot run its cell, when its server broke a rule it relies on."""
    preload = sys.modules.get("lowdim_bench.run.preload")
    if preload is not None and device.startswith("cuda") and getattr(preload, "CUDA_INITIALISED", False):
        return ("CUDA was initialised in the warm server (a plugin touched CUDA at import time), so a forked "
                f"cell cannot use it; run with {ENV_START}=spawn, or move that plugin's CUDA calls out of import")
    return None
