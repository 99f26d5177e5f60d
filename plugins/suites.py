"""Built-in plugin that publishes the standard suites in suites/."""
from __future__ import annotations

from pathlib import Path

import lowdim_bench_suites

from lowdim_bench.hookspecs import hookimpl


@hookimpl
def suite_paths() -> list[str]:
    return [str(Path(lowdim_bench_suites.__file__).parent)]
