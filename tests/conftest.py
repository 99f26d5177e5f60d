import gc
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="session")
def _share_the_cores():
    """Under pytest-xdist each test process gets its share of the cores for torch's own threads:
    two processes each spinning two threads on two cores run slower than one."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Base models go to a fresh cache, never the user's."""
    os.environ["LOWDIM_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _collector_as_it_was():
    """The app tunes the process's garbage collector (tui/idle_gc.py: no automatic full
    collection, start-up objects frozen); the tests after it in this process get it back."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()
    gc.unfreeze()


@pytest.fixture
def fake_plugins(monkeypatch):
    """Load tests/fakeplugins.py as a plugin, here and in worker processes and CLI subprocesses."""
    monkeypatch.setenv("LOWDIM_BENCH_PLUGIN_MODULES", "fakeplugins")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    if str(TESTS) not in sys.path:
        monkeypatch.syspath_prepend(str(TESTS))


def write_suite(path: Path, body: str) -> Path:
    path.write_text(body)
    return path
