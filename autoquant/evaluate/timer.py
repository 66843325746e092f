"""Timing models side by side: each model's session lives in the timing process (timing_process.py), on the thread
pool every timed session shares there; runs alternate between the models within each round, so that the ratio of
two models is not skewed by the machine's load drifting between two separate measurements."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .timing_process import read, write

FEW_ROUNDS = 4  # the rounds after which timing may stop (`enough`)


class Timer:
    """Models are given as serialized ONNX (bytes) and known by their hash: one session each in the timing
    process, kept until dropped."""

    def __init__(self, threads: int):
        self._proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("timing_process.py")), str(threads)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._finalizer = weakref.finalize(self, _stop, self._proc)
        self._loaded: set[str] = set()

    def _ask(self, *request):
        try:
            write(self._proc.stdin, request)
            reply = read(self._proc.stdout)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            raise ModelError("the timing process ended unexpectedly (out of memory?): rerun the command")
        status, value = reply
        if status == "error":
            raise ModelError(f"onnxruntime cannot time the model: {value}")
        return value

    def load(self, model: bytes) -> str:
        key = hashlib.sha256(model).hexdigest()[:16]
        if key not in self._loaded:
            self._ask("load", key, model)
            self._loaded.add(key)
        return key

    def drop(self, key: str) -> None:
        if key in self._loaded:
            self._ask("drop", key)
            self._loaded.discard(key)

    def feed(self, feed: dict[str, np.ndarray]) -> None:
        self._ask("feed", feed)

    def rounds(self, keys: list[str], repeats: int, enough: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
        """Milliseconds per run, one row per round, one column per key, after one untimed run of each (a fresh
        session's first run allocates). `enough`, asked with the rounds so far after each round from the
        FEW_ROUNDS-th on, ends the timing early."""
        self._ask("warm", keys)
        times = np.empty((repeats, len(keys)))
        for r in range(repeats):
            times[r] = self._ask("round", keys)
            if enough is not None and FEW_ROUNDS <= r + 1 < repeats and enough(times[: r + 1]):
                return times[: r + 1]
        return times

    def close(self) -> None:
        self._finalizer()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
