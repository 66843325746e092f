"""Comparing latencies from paired rounds (evaluate/timer.py times them): whether one model is measurably slower
than another, or cannot be told apart from it."""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

TIE_ALPHA = 0.05  # a plan is measurably slower when a one-sided sign test over the rounds says so at this level
TIE_MAX = 1.05  # ... or when its median is more than this much slower: few rounds cannot tell anything apart
SLOWER_P = 1 / 16  # slower_than's level: all of FEW_ROUNDS rounds


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
