"""Latency: median wall time of a fixed batch, warm-up excluded; several sessions are timed interleaved
so that their ratio is not skewed by the machine's load drifting between two separate measurements."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from scipy.stats import binom

TIE_ALPHA = 0.05  # a plan is measurably slower when a one-sided sign test over the rounds says so at this level
TIE_MAX = 1.05  # ... or when its median is more than this much slower: few rounds cannot tell anything apart
FEW_ROUNDS = 4  # the rounds after which timing may stop (`enough`)
SLOWER_P = 1 / 16  # slower_than's level: all of FEW_ROUNDS rounds


def interleaved_rounds_ms(
    sessions: list[ort.InferenceSession], feed: dict[str, np.ndarray] | np.ndarray, *, repeats: int, warmup: int = 1,
    enough: Callable[[np.ndarray], bool] | None = None,
) -> np.ndarray:
    """Milliseconds per run of `feed` (inputs by name, or the one input's array), one row per round, one
    column per session; runs alternate between sessions. A fresh session's first run is the slow one
    (allocations: 1.2-1.7× a steady run on EfficientNet-Lite1, batch 32); from the second on its runs are
    steady, so one warm-up round suffices — under objective latency every trial pays for it. `enough`,
    asked with the rounds so far after each round from the FEW_ROUNDS-th on, ends the timing early."""
    feeds = [feed if isinstance(feed, dict) else {s.get_inputs()[0].name: feed} for s in sessions]
    for _ in range(warmup):
        for s, f in zip(sessions, feeds):
            s.run(None, f)
    times = np.empty((repeats, len(sessions)))
    for r in range(repeats):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[r, i] = (time.perf_counter() - t0) * 1000.0
        if enough is not None and r + 1 >= FEW_ROUNDS and r + 1 < repeats and enough(times[: r + 1]):
            return times[: r + 1]
    return times


def interleaved_latency_ms(sessions: list[ort.InferenceSession], feed: dict[str, np.ndarray] | np.ndarray, *,
                           repeats: int) -> list[float]:  # fmt: skip
    """Median milliseconds per run for each session, timed interleaved."""
    return [float(m) for m in np.median(interleaved_rounds_ms(sessions, feed, repeats=repeats), axis=0)]


def slower_than(rounds: np.ndarray, i: int, j: int, factor: float) -> bool:
    """Whether session i is measurably slower than `factor` × session j: a one-sided sign test over the paired
    rounds (how often i took longer than factor × j) significant at SLOWER_P — after FEW_ROUNDS rounds, all
    of them; after seven, six."""
    slower = int((rounds[:, i] > factor * rounds[:, j]).sum())
    return float(binom.sf(slower - 1, len(rounds), 0.5)) <= SLOWER_P


def not_slower(rounds: np.ndarray, i: int, j: int) -> bool:
    """Whether session i is not measurably slower than session j in the same interleaved rounds: its median
    within TIE_MAX of j's, and a one-sided sign test over the paired rounds (how often i was the slower)
    not significant at TIE_ALPHA."""
    median = np.median(rounds, axis=0)
    if median[i] > TIE_MAX * median[j]:
        return False
    slower = int((rounds[:, i] > rounds[:, j]).sum())
    return float(binom.sf(slower - 1, len(rounds), 0.5)) >= TIE_ALPHA
