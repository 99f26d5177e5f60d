"""Shared by the tests of plugins/solvers: a seeded generator and one torch thread.

Why one thread: the solvers issue many small batched ops; on a loaded 2-core machine each
parallel region waits for both threads to be scheduled, which made a 0.3 s test take 5 s.
"""
from __future__ import annotations

import pytest
import torch


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
