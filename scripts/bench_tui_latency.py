"""Responsiveness of the real app in a real terminal (tmux): startup to first paint from the
`lowdim-bench` entry point, input-to-update latency idle and while a suite runs, and tab switches
and the help screen during the run.

Input-to-update: with the Results tab's filter box focused, one key is sent (`x`, then
Backspace, alternately) and the screen is read with `tmux capture-pane` until the box shows the
change (the placeholder disappears / comes back). The figure is everything a user waits for:
the key through tmux, Textual's handling, the table re-filter and chart redraw, the repaint
and tmux's screen update, measured from just before `send-keys` to the first capture that
shows it (capture itself takes a few ms, which the figure includes).

Tab switch: during the run, `2` and `3` alternately, from the key to the first capture that shows
the other tab (the Run tab's ETA line, the Results tab's filter box): first back to back, then
each after a pause of 1-2.5 s (when the app collects its garbage). Help: F1 to the key list on
screen, then Escape. The timed run is the suite with its seeds replaced by `--seeds` of them, so
that it outlasts the samples; only samples taken while it runs count.

    python scripts/bench_tui_latency.py                    # smoke suite, --jobs 2, 150 samples each
    python scripts/bench_tui_latency.py --samples 60 --suite suites/smoke.toml --jobs 2

Prints p50/p90/p99/max in ms and the load average. Targets (on a quiet machine): first paint
< 1.0 s, key p99 < 50 ms idle and < 100 ms during a run, tab switch p99 < 150 ms during a run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "filter: words match"


class Tmux:
    """The app's tmux server. Captures and keys go through one control-mode client (`tmux -C`)
    once `control()` is called: a command written to an open pipe, instead of a new tmux process
    per capture. Polling by process ran about a process every 3-5 ms while a sample waited, which
    on 2 cores took CPU from the app it measured (`--spawn` keeps that way, for comparison)."""

    def __init__(self, name: str) -> None:
        self.sock = f"lowdim-bench-{name}-{os.getpid()}"
        self.ctl: subprocess.Popen | None = None
        self.sent = 0  # commands sent on the control client (numbers its echoes)

    def run(self, *args: str) -> str:
        if self.ctl is not None:
            return self.command(*args)
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True).stdout

    def control(self) -> None:
        """Attach the control client: no pane output sent to it, no say in the window's size."""
        self.ctl = subprocess.Popen(["tmux", "-L", self.sock, "-C", "attach", "-t", "app", "-f", "no-output,ignore-size"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def command(self, *args: str) -> str:
        """One command on the control client, and its output. tmux answers each command with a
        %begin ... %end block (flags 1: this client's), and makes blocks of its own (the attach's,
        flags 0) that can come late; each command is followed by a numbered echo, and its output
        is this client's block just before the echo's."""
        self.sent += 1
        token = f"lowdim-bench-{self.sent}"
        self.ctl.stdin.write(" ".join(shlex.quote(a) for a in args) + f" ; display-message -p {token}\n")
        self.ctl.stdin.flush()
        last, block = "", None
        for line in self.ctl.stdout:
            if line.startswith("%begin"):
                block = [] if line.split()[-1] == "1" else None
            elif line.startswith(("%end", "%error")) and block is not None:
                text, block = "".join(block), None
                if text.strip() == token:
                    return last
                last = text
            elif line.startswith("%exit"):
                break
            elif block is not None:
                block.append(line)
        raise SystemExit("the tmux control client ended (did the app exit?)")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "app")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "app", *keys)

    def wait_for(self, cond, timeout: float, what: str) -> float:
        start = time.perf_counter()
        while True:
            if cond(self.screen()):
                return time.perf_counter()
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"timed out waiting for {what}\n{self.screen()}")

    def kill(self) -> None:
        if self.ctl is not None:
            self.ctl.kill()
            self.ctl = None
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


def start_app(tmux: Tmux, work: Path, suites: list[str], jobs: str = "1", entry: bool = False) -> float:
    """entry: the `lowdim-bench` console script with no arguments (what a user types), else
    `python -m lowdim_bench.tui SUITE --jobs N`."""
    env = f"LOWDIM_BENCH_STATE={work}/state LOWDIM_BENCH_CACHE={work}/cache TERM=xterm-256color"
    if entry:
        cmd = f"cd {work} && env {env} {Path(sys.executable).parent / 'lowdim-bench'}"
    else:
        cmd = (f"cd {work} && env {env} {sys.executable} -m lowdim_bench.tui {' '.join(suites)} --jobs {jobs} "
               f"--reports {work}/reports")
    t0 = time.perf_counter()
    tmux.run("new-session", "-d", "-s", "app", "-x", "160", "-y", "45", cmd)
    return t0


def filter_shown(screen: str) -> bool:
    return PLACEHOLDER not in screen


def sample(tmux: Tmux, n: int, keep=lambda: True) -> list[float]:
    """n alternating key presses into the focused filter box; ms from send to visible change."""
    out = []
    for i in range(n):
        typed = i % 2 == 0
        t0 = time.perf_counter()
        tmux.keys("x" if typed else "BSpace")
        t1 = tmux.wait_for(lambda s: filter_shown(s) == typed, 10, "the filter box to change")
        if keep():
            out.append((t1 - t0) * 1e3)
        time.sleep(0.02)
    return out


def switches(tmux: Tmux, n: int, keep=lambda: True, pause: tuple[float, float] | None = None) -> list[float]:
    """n tab switches, Run and Results alternately; ms from the key to the other tab on screen.
    pause: wait a random time in this range (s) before each switch, as a person who reads the
    screen does (the app collects garbage when no key came for a second: tui/idle_gc.py)."""
    out = []
    rng = random.Random(0)
    to_results = PLACEHOLDER not in tmux.screen()  # each sample a real switch, the first one too
    for _ in range(n):
        if pause:
            time.sleep(rng.uniform(*pause))
        t0 = time.perf_counter()
        tmux.keys("3" if to_results else "2")
        t1 = tmux.wait_for(lambda s: (PLACEHOLDER in s) if to_results else ("ETA" in s), 20, "the tab")
        if keep():
            out.append((t1 - t0) * 1e3)
        to_results = not to_results
        time.sleep(0.05)
    return out


def helps(tmux: Tmux, n: int, keep=lambda: True) -> list[float]:
    """F1 to the key list on screen, n times (Escape closes it between samples)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        tmux.keys("F1")
        t1 = tmux.wait_for(lambda s: "ctrl+s / ctrl+d" in s, 20, "the help screen")
        if keep():
            out.append((t1 - t0) * 1e3)
        tmux.keys("Escape")
        tmux.wait_for(lambda s: "ctrl+s / ctrl+d" not in s, 20, "the help to close")
        time.sleep(0.05)
    return out


def stats(xs: list[float], raw: bool = False) -> str:
    """Percentiles; raw: every sample too, in the order taken."""
    if not xs:
        return "no samples"
    order = f"\n  in order: {' '.join(f'{x:.0f}' for x in xs)}" if raw else ""
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
    return (f"n={len(xs)} p50={statistics.median(xs):.1f} p90={q(0.9):.1f} p99={q(0.99):.1f} "
            f"max={xs[-1]:.1f} ms{order}")


def longer_suite(suite: Path, seeds: int, work: Path) -> Path:
    """A copy of the suite with `seeds` seeds, so that the run lasts past the samples (the smoke
    suite's 9 cells take ~12 s here, less than the samples). Same name, so the app lists it alike."""
    line = f"seeds = {list(range(seeds))}"
    text, found = re.subn(r"(?m)^seeds\s*=.*$", line, suite.read_text())
    if not found:  # the suite relies on the default seeds: a top-level key goes before any table
        text = f"{line}\n{text}"
    out = work / suite.name
    out.write_text(text)
    return out


def failed_cells(work: Path) -> list[str]:
    """First line of each failed cell's error (a cell timing out under load is not the app's fault,
    but the figures should say the run was shorter)."""
    out = []
    for f in (work / "reports").glob("*/records.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r.get("status") == "failed":
                out.append(f"{r.get('method')}[{r.get('kind')}]: {(r.get('error') or '').splitlines()[0][:120]}")
    return out


def run_status(work: Path) -> str:
    found = list((work / "reports").glob("*/run.json"))
    return json.loads(found[0].read_text()).get("status", "?") if found else "none"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default=str(ROOT / "suites" / "smoke.toml"))
    ap.add_argument("--jobs", default="2")
    ap.add_argument("--samples", type=int, default=150)
    ap.add_argument("--startups", type=int, default=3)
    ap.add_argument("--paused", type=int, default=10, help="tab switches taken after a pause")
    ap.add_argument("--seeds", type=int, default=12,
                    help="seeds the timed run uses (the suite's own list is replaced): enough cells that the "
                         "run outlasts the samples")
    ap.add_argument("--spawn", action="store_true",
                    help="poll the screen with a tmux process per capture (the first versions of this script)")
    ap.add_argument("--raw", action="store_true", help="also print every sample in the order taken")
    args = ap.parse_args()
    if not shutil.which("tmux"):
        raise SystemExit("tmux is needed (apt-get install tmux)")

    print(f"load average before: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f} "
          f"({os.cpu_count()} cores)")
    paint, ready = [], []
    for i in range(args.startups):
        work = Path(tempfile.mkdtemp())
        tmux = Tmux(f"start{i}")
        try:
            t0 = start_app(tmux, work, [], entry=True)
            if not args.spawn:
                tmux.control()
            paint.append((tmux.wait_for(lambda s: "Suites" in s, 60, "first paint") - t0) * 1e3)
            ready.append((tmux.wait_for(lambda s: "smoke" in s, 120, "suites listed") - t0) * 1e3)
        finally:
            tmux.kill()
            shutil.rmtree(work, ignore_errors=True)
    if args.startups:
        print(f"startup to first paint (lowdim-bench): {stats(paint, args.raw)}")
        print(f"startup to plugins loaded (suites listed): {stats(ready, args.raw)}")

    work = Path(tempfile.mkdtemp())
    tmux = Tmux("run")
    try:
        start_app(tmux, work, [str(longer_suite(Path(args.suite), args.seeds, work))], args.jobs)
        if not args.spawn:
            tmux.control()
        tmux.wait_for(lambda s: "Every built-in method" in s or "smoke" in s, 120, "the suite")
        tmux.keys("/")
        tmux.wait_for(lambda s: PLACEHOLDER in s, 10, "the results tab")
        keys = args.samples + args.samples % 2  # even: the filter box ends empty, as the tab switches need
        idle = sample(tmux, keys)
        print(f"input-to-update idle: {stats(idle, args.raw)}")
        tmux.keys("F5")
        tmux.wait_for(lambda s: "running" in s, 60, "the run to start")
        while run_status(work) != "running":
            time.sleep(0.2)
        time.sleep(3)  # workers spawned and busy
        tmux.keys("/")
        tmux.wait_for(lambda s: PLACEHOLDER in s, 10, "the results tab")
        running = lambda: run_status(work) == "running"
        busy = sample(tmux, keys, keep=running)
        print(f"input-to-update during a run ({Path(args.suite).name}, jobs {args.jobs}): {stats(busy, args.raw)}")
        tmux.keys("Escape")  # leave the filter box; alone, or the terminal reads Escape+2 as one key
        time.sleep(0.5)
        tabs = switches(tmux, args.samples // 2, keep=running)
        print(f"tab switch (2 <-> 3) during the run: {stats(tabs, args.raw)}")
        paused = switches(tmux, args.paused, keep=running, pause=(1.0, 2.5))
        print(f"tab switch after a 1-2.5 s pause, during the run: {stats(paused, args.raw)}")
        f1 = helps(tmux, max(5, args.samples // 10), keep=running)
        print(f"F1 help during the run: {stats(f1, args.raw)}")
        if run_status(work) != "running":
            print("note: the run ended before the samples did; only samples taken while it ran are counted")
        tmux.keys("F6")
    finally:
        time.sleep(2)
        tmux.kill()
        for line in failed_cells(work):
            print(f"note: a cell of the timed run failed: {line}")
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
