"""`lowdim-bench`: the entry point. With no arguments it opens the Textual app; with a command it
runs it headless (lowdim_bench/commands.py has the commands and the exit codes).

Why so thin: the app must paint before torch is imported (seconds on a busy machine), and the
headless path must never import Textual (a test checks both). So this module imports neither;
each branch imports what it needs.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        import gc

        gc.disable()  # while Textual and the app import and build the first frame (tui/app.py)
        from .tui.app import main as app_main

        return app_main([])
    command = next((a for a in argv if not a.startswith("-")), None)  # after global options (--strict-plugins)
    if command == "run" and "ray" not in argv:
        from .run import warm  # the standard library only

        # Start the warm cell server first, so its imports (torch, the plugins) run beside this
        # process's own instead of after them: the first cell then starts seconds sooner.
        warm.prestart()
    from .commands import dispatch

    return dispatch(argv)


def entry() -> None:
    """Console-script entry: `| head` closing the pipe is not an error."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stdout = None  # nothing more can be written; skip the flush at exit
        code = 0
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
