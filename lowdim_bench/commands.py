"""The headless commands behind `lowdim-bench` (run, list, compare, show, new-plugin).

Exit codes: 0 every cell succeeded, 1 some cell failed (or the run was cancelled), 2 usage or
configuration error, 3 storage or environment error (a run folder that cannot be written or
read, a full disk, a run another process is writing), 130 interrupted twice with Ctrl-C.
`compare BASE NEW` is the regression gate (lowdim_bench/gate.py, docs/gate.md): 0 no regression,
1 a regression beyond its tolerance, 2 usage error.
This module imports the run machinery (torch, polars); cli.py imports it only for a command, so
`lowdim-bench` alone paints the app first.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import polars as pl

from . import __version__, gate, gate_render, listing, report
from .core import events as ev
from .core.cells import is_cell_key
from .core.store import RunStore, StorageError, describe
from .plan import make_plan
from .registry import PluginLoadError, Registry, UnknownName
from .run import runner
from .suite import Overrides, SuiteError

USAGE_ERROR = 2
STORAGE_ERROR = 3
INTERRUPTED = 130


class ProgressPrinter:
    """Live progress: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, stream=None) -> None:
        stream = stream or sys.stderr  # looked up per call: tests and the app swap sys.stderr
        self.stream, self.tty = stream, stream.isatty()
        self.total = self.done = self.failed = 0
        self.current = ""
        self.run_dir = ""

    def __call__(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunStarted):
            self.total, self.done, self.run_dir = e.total, e.skipped, e.run_dir
            self.line(f"run {e.run_id}: {e.total} cells ({e.skipped} already done) -> {e.run_dir}", keep=True)
        elif isinstance(e, ev.CellStarted):
            self.current = e.label
            if self.tty:
                self.line(self.status())
        elif isinstance(e, ev.Progress) and self.tty:
            loss = f" loss {e.loss:.4g}" if e.loss is not None else ""
            self.line(f"{self.status()}  {e.stage} {e.step}/{e.steps}{loss}")
        elif isinstance(e, ev.CellFailed):
            self.line(f"FAILED {e.label}: {e.reason.splitlines()[0]}", keep=True)
        elif isinstance(e, ev.CellFinished):
            self.done += 1
            self.failed += e.status == "failed"
            if e.status == "ok":
                self.line(f"[{self.done}/{self.total}] ok {e.label} ({e.duration_s:.1f} s)", keep=not self.tty)
        elif isinstance(e, ev.RunFinished):
            self.line(f"run finished: {e.ok} ok, {e.failed} failed{' (cancelled)' if e.cancelled else ''}", keep=True)

    def status(self) -> str:
        return f"[{self.done}/{self.total}, {self.failed} failed] {self.current}"

    def line(self, text: str, keep: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if keep else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowdim-bench", description="Compare low-dimensional methods on standard suites.",
                                epilog="With no command it opens the terminal app; `python -m lowdim_bench.tui --help` "
                                       "lists the app's own options (suite files, --reports, --jobs).")
    p.add_argument("--version", action="version", version=f"lowdim-bench {__version__}")
    p.add_argument("--strict-plugins", action="store_true", help="a plugin that fails to load is an error (CI)")
    sub = p.add_subparsers(dest="command")

    r = sub.add_parser("run", help="run suites headless")
    r.add_argument("suites", nargs="*", help="suite files, or names of suites the plugins provide")
    r.add_argument("--methods", type=_csv(str), help="only these methods (comma-separated)")
    r.add_argument("--tasks", type=_csv(str), help="only these tasks")
    r.add_argument("--budgets", type=_csv(float), help="override the budgets (fractions, comma-separated)")
    r.add_argument("--knobs", type=_csv(float), help="explicit knob values (e.g. ranks 4,8) instead of budgets")
    r.add_argument("--seeds", type=_csv(int), help="override the seeds")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    r.add_argument("--jobs", type=int, default=1, help="parallel cells on CPU (CUDA: one per device)")
    r.add_argument("--out", type=Path, default=Path("reports"), help="folder for run folders (default reports/)")
    r.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run")
    r.add_argument("--retry-failed", action="store_true", help="with --resume: run failed cells again")
    r.add_argument("--timeout", type=float, help="override the per-cell time limit (seconds)")
    r.add_argument("--format", choices=["table", "json", "markdown"], default="table")
    r.add_argument("--executor", choices=list(runner.EXECUTORS), default="local",
                   help="where cells run: local processes (default) or a Ray cluster (docs/scale.md)")
    r.add_argument("--address", help="with --executor ray: the cluster to join (e.g. auto, ray://head:10001); "
                   "default: this machine's cluster, or a new local one")

    n = sub.add_parser("new-plugin", help="write a pip-installable plugin package to start from (docs/plugins.md)")
    n.add_argument("name", help="plugin name: lowercase words joined by '-', e.g. my-lora")
    n.add_argument("--kind", default="adapt", help="what the package provides, comma-separated: adapt, compress, "
                   "train, head, merge (with task), task, metric, analysis (default adapt)")
    n.add_argument("--dist", help="distribution name (default lowdim-bench-NAME)")
    n.add_argument("--dir", type=Path, default=Path("."), help="parent folder (default: the current one)")

    ls = sub.add_parser("list", help="list plugins, methods, tasks, suites or metrics")
    ls.add_argument("what", nargs="?", default="methods",
                    choices=["plugins", "methods", "tasks", "suites", "metrics", "analyses"])
    ls.add_argument("--verbose", "-v", action="store_true",
                    help="every setting a suite may give (type, default, range, help); tasks: the dense size")

    c = sub.add_parser("compare", help="gate NEW against BASE: exit 1 on a regression beyond its tolerance",
                       description="Regression gate (docs/gate.md). Exit codes: 0 pass, 1 regression, 2 usage.")
    c.add_argument("a", type=Path, metavar="BASE")
    c.add_argument("b", type=Path, metavar="NEW")
    c.add_argument("--fail-on", default=gate.DEFAULT_SPEC, metavar="SPEC",
                   help=f"per-metric tolerances NAME:[+|-]X[%%], comma-separated; 'default' = {gate.DEFAULT_SPEC}; "
                   "NAME:off drops one; 'none' gates only missing and failed rows (default: the default set)")
    c.add_argument("--format", choices=["table", "markdown", "junit", "json"], default="table")
    c.add_argument("--out", type=Path, metavar="FILE",
                   help="write the --format output to FILE (the terminal table still goes to stdout)")
    c.add_argument("--deltas", action="store_true", help="also print every metric's delta, gated or not")

    s = sub.add_parser("show", help="print a run's comparison table")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--metrics", type=_csv(str), help="instead of the comparison table, these metric columns "
                   "(prefixes, e.g. memory_,latency_p99), in their raw units")
    s.add_argument("--format", choices=["table", "json", "markdown"], default="table")
    return p


def _print_summary(s, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(s.to_dicts(), default=str, indent=1))
    elif fmt == "markdown":
        print(report.render_markdown(s))
    else:
        print(report.render_table(s))


def print_analyses(run_dir: Path, registry: Registry | None = None) -> None:
    """Each analysis table the run wrote (<name>.csv), rendered by its analysis when installed."""
    meta = json.loads((Path(run_dir) / "run.json").read_text())
    for name in (meta.get("suite") or {}).get("analyses") or {}:
        path = Path(run_dir) / f"{name}.csv"
        if not path.exists():
            continue
        table = pl.read_csv(path, infer_schema_length=None)
        registry = registry or Registry.load()
        prov = registry.analyses.get(name) if registry is not None else None
        print("\n" + (prov.cls().render(table) if prov else f"{name}:\n{table}"))


class CtrlC:
    """The first Ctrl-C cancels the run like the app's F6 (cells in flight stop, finished records
    stay, the run is marked cancelled); a second one quits at once."""

    def __init__(self) -> None:
        self.stop = threading.Event()

    def __call__(self, signum, frame) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        print("\nlowdim-bench: stopping - the cells in flight are cancelled, finished ones are kept "
              "(Ctrl-C again to quit at once)", file=sys.stderr)


def resume_hint(run_dir: str | Path) -> str:
    return f"resume with: lowdim-bench run --resume {run_dir}"


def check_executor(args) -> None:
    """Refuse a bad --executor/--address before anything is written. (cli.main has already started
    the warm cell server, before this module's imports; an executor starts it when nobody did.)"""
    if args.address and args.executor != "ray":
        raise SuiteError("--address names a Ray cluster; add --executor ray")
    if args.executor == "ray":
        from .run.ray_executor import import_ray

        import_ray()


def cmd_run(args, registry: Registry) -> int:
    ctrl_c = CtrlC()
    printer = ProgressPrinter()
    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        return _run(args, registry, printer, ctrl_c)
    except KeyboardInterrupt:
        print("\nlowdim-bench: interrupted" + (f"; {resume_hint(printer.run_dir)}" if printer.run_dir else ""),
              file=sys.stderr)
        return INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(args, registry: Registry, printer: ProgressPrinter, ctrl_c: CtrlC) -> int:
    common = dict(device=args.device, jobs=args.jobs, listeners=[printer], should_stop=ctrl_c.stop.is_set,
                  executor_kind=args.executor, address=args.address)
    if args.resume:
        if args.suites:
            raise SuiteError("--resume takes the run folder only; the suite comes from it")
        results = [runner.run_cells([], {}, registry, resume=args.resume, retry_failed=args.retry_failed, **common)]
    else:
        if not args.suites:
            raise SuiteError("name at least one suite, e.g. `lowdim-bench run suites/smoke.toml`")
        overrides = Overrides(budgets=args.budgets, knobs=args.knobs, seeds=args.seeds, timeout_s=args.timeout,
                              methods=args.methods, tasks=args.tasks, device=args.device)
        plans = [make_plan(name, registry, overrides) for name in args.suites]  # every suite checked first
        results = []
        for p in plans:
            if ctrl_c.stop.is_set():
                break
            results.append(runner.run_cells(p.cells, p.meta, registry, out_dir=args.out, **common))
    failed = False
    for res in results:
        _print_summary(report.summary(report.load(res.run_dir)), args.format)
        print_analyses(res.run_dir, registry)
        print(f"\nreport: {res.run_dir}/ (records.parquet, summary.csv, summary.md)")
        if res.cancelled:
            print(f"run cancelled: {resume_hint(res.run_dir)}", file=sys.stderr)
        failed |= res.failed > 0 or res.cancelled
    return 1 if failed else 0


def cmd_list(args, registry: Registry) -> int:
    print("\n".join(listing.lines(registry, args.what, args.verbose)))
    broken = registry.broken
    if broken and args.what != "plugins":
        print(f"\n{len(broken)} plugin(s) failed to load: {', '.join(p.name for p in broken)} "
              "(see `lowdim-bench list plugins`)", file=sys.stderr)
    return 0


def finished_run(path: Path, role: str) -> None:
    """Refuse a folder that is not a finished run with records: a gate against nothing passes nothing."""
    meta = RunStore.open(path).meta()
    ok = report.load(path).filter(pl.col("status") == "ok")["cell_key"].drop_nulls().unique().to_list()
    cells = [k for k in ok if is_cell_key(k)]
    if meta.get("status") != "finished" or not cells:
        raise SuiteError(f"{path}: {role} is not a finished run (status {meta.get('status', '?')!r}, "
                         f"{len(cells)} ok cell(s)); gate against a run that finished")


def cmd_compare(args) -> int:
    tolerances = gate.parse_spec(args.fail_on)  # a bad spec is a usage error before anything loads
    finished_run(args.a, "BASE")
    base, new = report.load(args.a), report.load(args.b)
    if args.deltas:
        print(report.render_compare(report.compare(base, new)) + "\n")
    result = gate.evaluate(base, new, tolerances)
    rendered = {"table": gate_render.render_table, "markdown": gate_render.render_markdown,
                "junit": gate_render.render_junit,
                "json": lambda r: json.dumps(gate_render.to_dicts(r), default=str, indent=1)}[args.format](result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(rendered if rendered.endswith("\n") else rendered + "\n")
        print(gate_render.render_table(result))
        print(f"{args.format} written to {args.out}", file=sys.stderr)
    else:
        print(rendered)
    return 0 if result.passed else 1


def dispatch(argv: list[str]) -> int:
    """Run one headless command (argv without the program name); returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return USAGE_ERROR
    try:
        if args.command == "new-plugin":
            from .scaffold import ScaffoldError, new_plugin

            try:
                made = new_plugin(args.name, args.kind, args.dir, args.dist)
            except ScaffoldError as e:
                raise SuiteError(str(e)) from None
            print(f"wrote {made.root}/ (plugin {made.name!r}: {made.kind}; distribution {made.dist})\n"
                  f"next: pip install -e {made.root} && lowdim-bench list plugins && "
                  f"lowdim-bench run {made.name}-smoke && (cd {made.root} && python -m pytest -q)")
            return 0
        if args.command in ("compare", "show"):
            for d in ([args.a, args.b] if args.command == "compare" else [args.run_dir]):
                if not (Path(d) / "run.json").is_file():
                    raise SuiteError(f"{d}: not a run folder (no run.json)")
            if args.command == "compare":
                return cmd_compare(args)
            return cmd_show(args)
        if args.command == "run":
            check_executor(args)
        registry = Registry.load(strict=args.strict_plugins)
        if args.command == "list":
            return cmd_list(args, registry)
        return cmd_run(args, registry)
    except StorageError as e:
        print(f"lowdim-bench: storage error: {e}", file=sys.stderr)
        return STORAGE_ERROR
    except OSError as e:
        print(f"lowdim-bench: storage error: {describe(e, e.filename or '?')}", file=sys.stderr)
        return STORAGE_ERROR
    except (SuiteError, PluginLoadError, UnknownName, ValueError) as e:
        print(f"lowdim-bench: error: {e}", file=sys.stderr)
        return USAGE_ERROR


def cmd_show(args) -> int:
    store = RunStore.open(args.run_dir)
    summary = report.summary(report.load(args.run_dir))
    if args.metrics:
        print(report.render_table(summary, args.metrics))
    else:
        _print_summary(summary, args.format)
        print_analyses(args.run_dir)
    store.records()
    if store.problems.lines:
        print(f"lowdim-bench: warning: {args.run_dir}: {store.problems.summary()}", file=sys.stderr)
    status = store.meta().get("status")
    if status != "finished":
        print(f"lowdim-bench: this run is {status}; {resume_hint(args.run_dir)}", file=sys.stderr)
    return 0
