"""lowdim-bench plugin `dora`: registers the DoRA method and the dora-smoke suite."""
from __future__ import annotations

from pathlib import Path

from lowdim_bench.hookspecs import hookimpl

from .dora import DoraLinear, DoraMethod, merge_dora

__all__ = ["DoraLinear", "DoraMethod", "merge_dora"]
__version__ = "0.1.0"


@hookimpl
def register_methods(register) -> None:
    register(DoraMethod)


@hookimpl
def suite_paths() -> list[str]:
    return [str(Path(__file__).parent / "suites")]
