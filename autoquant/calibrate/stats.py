"""Activation statistics that every range algorithm is computed from: exact min/max and a merged histogram.

The histogram covers a symmetric range [-R, R] with a fixed number of bins. When a batch exceeds R,
R doubles and adjacent bins are summed pairwise, which is exact (old edges are a subset of the new
ones). Memory per tensor is therefore constant, however many batches are seen — unlike
onnxruntime's entropy/percentile calibrators, which keep every batch's outputs
(onnxruntime issues #10503, #17235).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NUM_BINS = 4096  # even, so that doubling R maps bin pairs onto bins exactly


@dataclass
class TensorStats:
    min: float = np.inf
    max: float = -np.inf
    radius: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BINS, dtype=np.int64))
    nonfinite: int = 0  # NaN / ±inf values seen, left out of everything above

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.radius, self.radius, len(self.counts) + 1)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def update(self, values: np.ndarray) -> None:
        v = values.reshape(-1)
        if v.size == 0:
            return
        lo, hi = float(v.min()), float(v.max())
        # ±inf (an attention mask's "minus infinity") has no place on any grid; ranges describe the rest. NaN and
        # ±inf show in the extremes, so the common all-finite tensor costs no pass of its own.
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(v)
            self.nonfinite += int(v.size - np.count_nonzero(finite))
            v = v[finite]
            if v.size == 0:
                return
            lo, hi = float(v.min()), float(v.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        absmax = max(abs(lo), abs(hi))
        if self.radius == 0.0:
            self.radius = absmax if absmax > 0 else 1e-8
        while absmax > self.radius:
            self._double()
        n = len(self.counts)
        scaled = v + self.radius  # ≥ 0: |v| ≤ radius, and rounding the radius to v's type cannot cross |v|
        scaled *= n / (2 * self.radius)
        idx = scaled.astype(np.intp)
        np.minimum(idx, n - 1, out=idx)  # v = radius lands on n
        self.counts += np.bincount(idx, minlength=n)

    def _double(self) -> None:
        n = len(self.counts)
        pairs = self.counts.reshape(-1, 2).sum(axis=1)  # n/2 merged bins cover the old range
        self.counts = np.zeros(n, dtype=np.int64)
        self.counts[n // 4 : n // 4 + n // 2] = pairs
        self.radius *= 2


def stats_to_arrays(stats: dict[str, TensorStats]) -> dict[str, np.ndarray]:
    names = list(stats)
    return {
        "names": np.array(names),
        "min": np.array([stats[t].min for t in names], dtype=np.float64),
        "max": np.array([stats[t].max for t in names], dtype=np.float64),
        "radius": np.array([stats[t].radius for t in names], dtype=np.float64),
        "counts": np.stack([stats[t].counts for t in names]) if names else np.zeros((0, NUM_BINS), np.int64),
        "nonfinite": np.array([stats[t].nonfinite for t in names], dtype=np.int64),
    }


def stats_from_arrays(arrays) -> dict[str, TensorStats]:
    return {
        str(name): TensorStats(float(arrays["min"][i]), float(arrays["max"][i]), float(arrays["radius"][i]),
                               arrays["counts"][i].copy(), int(arrays["nonfinite"][i]))
        for i, name in enumerate(arrays["names"])
    }
