"""Command line: one module per command (its arguments and what it runs), `main() -> int` here. User mistakes
exit 2 with one line, no traceback; output formatting shared by several commands is in output.py.

Each command module has NAME, HELP, `add_arguments(parser)` and `run(args) -> int` (Optuna's and MLflow's
shape: the parser is assembled from the commands, so a new command is a new module listed in COMMANDS)."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings

from ..errors import AutoquantError
from . import (
    apply,
    evaluate,
    export,
    finetune,
    inspect,
    layers,
    quantize,
    reoptimize,
    report,
    search,
    sensitivity,
    worker,
)
from .common import Parser, configure_logging, describe_os_error

COMMANDS = (quantize, evaluate, inspect, apply, search, worker, export, finetune, reoptimize, sensitivity, report, layers)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="autoquant", description="Find and ship the best INT8 quantization of a model.")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        parser = sub.add_parser(command.NAME, help=command.HELP)
        command.add_arguments(parser)
        parser.add_argument("--verbose", action="store_true", help="also show the libraries' own informational logs")
        parser.set_defaults(fn=command.run)
    return p


def _terminated(signum, frame):
    """SIGTERM (`timeout`, systemd, a scheduler) ends the command as Ctrl-C does: temporary files and the timing
    process are cleaned up on the way out, and what finished is kept."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (already printed, one line) and --help
        return exc.code if isinstance(exc.code, int) else 2
    quiet = getattr(args, "quiet", False)  # scheduled runs: errors and warnings only, no bars
    configure_logging(quiet=quiet, verbose=args.verbose)
    from .. import progress

    progress.enable(not quiet)
    previous = signal.signal(signal.SIGTERM, _terminated) if _main_thread() else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return args.fn(args)
    except AutoquantError as exc:
        print(f"autoquant: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"autoquant: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoquant: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
