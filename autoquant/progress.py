"""Progress bars for long work (decoding an image folder, reading a data loader, a study's trials, …): a tqdm bar
on stderr when the program running autoquant turns them on — the command line does, unless --quiet — and stderr
is a terminal, and nothing otherwise, so a library call stays silent. Messages go through `logging` ("autoquant"
loggers); bars only here."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

_enabled = False


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _terminal() -> bool:
    """Bars are drawn on a terminal only: in a log file (a scheduled run) they are a line of carriage returns."""
    return sys.stderr.isatty()


def bar(total: int | None, desc: str, *, unit: str = "it", initial: int = 0, leave: bool = False):
    """A bar to update by hand (tqdm's update / set_postfix / write / close), or one that shows nothing."""
    if not (_enabled and _terminal()):
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, leave=leave, dynamic_ncols=True)


def write(text: str) -> None:
    """A line on stderr that does not tear a bar being drawn: printed above it (tqdm.write) while bars are on."""
    if _enabled and _terminal():
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def progress(items: Iterable, desc: str, *, total: int | None = None, unit: str = "it") -> Iterator:
    """`items`, with a bar while they are consumed."""
    shown = bar(total if total is not None else (len(items) if hasattr(items, "__len__") else None), desc, unit=unit)
    try:
        for item in items:
            yield item
            shown.update(1)
    finally:
        shown.close()
