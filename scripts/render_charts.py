"""Render the app's charts to PNG (docs/img/) as a person sees them: the real app, headless, at
100x30 and 160x48, one picture per chart, then Textual's SVG screenshot through rsvg-convert.

    python scripts/render_charts.py                       # the committed smoke baseline + the test grid
    python scripts/render_charts.py --run reports/X --out /tmp/charts --sizes 120x40

The baseline is real measurements (one seed); the grid is the pilot tests' fixed run (two seeds,
a tie, an over-budget row) and shows what the Pareto chart draws for ties.
Needs rsvg-convert (Debian: librsvg2-bin); without it the SVGs stay. pngquant, when there, shrinks the PNGs.
"""
from __future__ import annotations

import argparse
import json
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "tui"), str(ROOT / "tests")]

from helpers import fixed_registry, grid_run  # noqa: E402

from lowdim_bench.tui.app import LowdimApp  # noqa: E402
from lowdim_bench.tui.widgets.reports import RunsTable  # noqa: E402
from lowdim_bench.tui.widgets.results import ResultsTable  # noqa: E402

NAMES = ["pareto", "latency", "memory", "batch"]


async def shoot(reports: Path, run_id: str, out: Path, prefix: str, size: tuple[int, int], charts: list[int],
                down: int, zoom: float) -> None:
    app = LowdimApp([], reports, registry_factory=fixed_registry, devices=[])
    async with app.run_test(size=size) as pilot:
        while not any(r.run_id == run_id for r in app.query_one(RunsTable).runs):
            await pilot.pause(0.05)
        app.open_run(next(r for r in app.query_one(RunsTable).runs if r.run_id == run_id))
        while app.view_source != run_id:
            await pilot.pause(0.05)
        app.query_one(ResultsTable).focus()
        await pilot.press(*["down"] * down)
        for c in charts:
            app.action_show_chart(c)
            await pilot.pause(0.5)
            svg = out / f"{prefix}{NAMES[c]}-{size[0]}x{size[1]}.svg"
            app.save_screenshot(str(svg))
            if shutil.which("rsvg-convert"):
                subprocess.run(["rsvg-convert", "-z", str(zoom), "-o", str(svg.with_suffix(".png")), str(svg)],
                               check=True)
                svg.unlink()
                if shutil.which("pngquant"):  # 256 colours: a third of the size, the same picture
                    subprocess.run(["pngquant", "--force", "--skip-if-larger", "--output",
                                    str(svg.with_suffix(".png")), str(svg.with_suffix(".png"))], check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=ROOT / "reports" / "baseline" / "smoke")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--sizes", default="100x30,160x48")
    ap.add_argument("--zoom", type=float, default=0.6)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    os.environ["LOWDIM_BENCH_STATE"] = str(tmp / "state")
    reports = tmp / "reports"
    shutil.copytree(args.run, reports / args.run.name)
    grid = grid_run(reports)
    run_id = json.loads((reports / args.run.name / "run.json").read_text())["run_id"]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    for size in sizes:
        asyncio.run(shoot(reports, run_id, args.out, "", size, [0, 1, 2, 3], 1, args.zoom))
    asyncio.run(shoot(reports, grid.name, args.out, "ties-", sizes[-1], [0], 2, args.zoom))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {sorted(p.name for p in args.out.glob('*.png'))}")


if __name__ == "__main__":
    main()
