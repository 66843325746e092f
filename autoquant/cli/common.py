"""What every command shares: the parser (one-line usage errors, negative numbers as values), number arguments,
logging for a terminal, the one-line text of an OS error, and an experiment's workspace."""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import re
from pathlib import Path

from ..config import Cost

log = logging.getLogger("autoquant")


class Parser(argparse.ArgumentParser):
    """argparse prints the whole usage before its error; autoquant's errors are one line (and exit 2). A value that
    starts with '-' and reads as a number (-1e3, -inf, -nan) is a value, not an option: argparse only takes
    plain negative decimals, and `--max-accuracy-drop -inf` would read as a missing argument."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)

    def error(self, message):
        self.exit(2, f"autoquant: error: {self.prog}: {message} (see {self.prog} --help)\n")


def number(kind: type, low: float, *, above: bool = False):
    """An argument type: a finite `kind` at least (or above) `low`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or (value <= low if above else value < low):
            bound = f" {'above' if above else 'of at least'} {low}" if math.isfinite(low) else ""
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text}")
        return value

    return parse


COUNT = number(int, 1)
NON_NEGATIVE = number(int, 0)
DROP = number(float, -math.inf, above=True)  # any finite number of points (negative: must beat FP32)
COST_CHOICES = "{" + ",".join(c.value for c in Cost) + "}"


def add_cost(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    parser.add_argument(flag, type=Cost, choices=list(Cost), metavar=COST_CHOICES, **kwargs)


class _Stderr(logging.Handler):
    """One line per record on whatever sys.stderr is at the time (tests and embedding programs swap it), above any
    progress bar being drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        from .. import progress

        try:
            progress.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise into the program (logging.Handler's own rule)
            self.handleError(record)


def configure_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """The library logs to the "autoquant" logger; on the command line its messages are one line each on stderr
    (warnings and errors only with `quiet`). Third-party chatter meant for people running those tools by hand
    stays below what is shown unless `verbose`: MLflow's schema migrations, onnxruntime's quantization advice
    ("run pre-processing first", through the root logger on every model build) and its int4 quantizer's
    per-node INFO lines. The root logger gets a handler first: that quantizer calls logging.basicConfig(level=INFO)
    when it is imported, which does nothing on a root logger that already has one."""
    own = logging.getLogger("autoquant")
    if not own.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("autoquant: %(message)s"))
        own.addHandler(handler)
    own.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    own.propagate = False
    root = logging.getLogger()
    if not root.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.ERROR)
    # MLflow logs each failed write with a traceback (a full disk: one per trial); autoquant reports a tracking
    # failure itself, once. It sets its logger's level from this variable when it is imported (lazily).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")
    logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.CRITICAL)
    from .. import runtime

    runtime.quiet_onnxruntime(not verbose)


def describe_os_error(exc: OSError) -> str:
    """An unwritable, missing or full location as one clause that names it. Writes are atomic, so nothing that
    was there before has been damaged; a full disk names the folder whose disk is full."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        folder = Path(str(exc.filename)).parent if exc.filename else None
        return (f"cannot read or write{where}: {exc.strerror or 'No space left on device'}"
                + (f" in {folder}: free space on its disk, or write elsewhere" if folder else ": free space"))
    return f"cannot read or write{where}: {exc.strerror or exc}; check the path, its permissions and free space"


def workspace(experiment: Path):
    from ..config import load_experiment
    from ..workspace import Workspace

    exp = load_experiment(experiment)
    log.info("preparing %s (calibration and FP32 reference are cached in %s)", exp.name, exp.cache)
    return Workspace(exp)  # computes each piece when first used; calibration logs its own time
