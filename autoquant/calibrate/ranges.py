"""Range algorithms: pure functions from cached TensorStats to a clipping range (lo, hi).

None of them touches data or a network; a trial calls them on the cache. `levels` is the number of
quantization steps (255 for 8 bits).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from .stats import TensorStats

DEFAULT_PERCENTILE = 99.99


def minmax(s: TensorStats, levels: int = 255) -> tuple[float, float]:
    return s.min, s.max


def percentile(s: TensorStats, levels: int = 255, pct: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    """Clip both tails at `pct` (one tail if the tensor is non-negative, e.g. after ReLU)."""
    cdf = np.cumsum(s.counts) / max(s.total, 1)
    edges = s.edges
    hi = edges[1:][np.searchsorted(cdf, pct / 100.0)]
    lo = s.min if s.min >= 0 else edges[:-1][np.searchsorted(cdf, 1.0 - pct / 100.0, side="right")]
    return max(s.min, float(lo)), min(s.max, float(hi))


def _prefix_sums(s: TensorStats) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin centres (ascending) and the prefix sums of n, n·c and n·c² over them."""
    c, n = s.centers, s.counts.astype(np.float64)
    return c, *(np.concatenate([[0.0], np.cumsum(n * c**p)]) for p in (0, 1, 2))


def _sq_error(sums: tuple[np.ndarray, ...], lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """Expected squared quantization error of the histogram (its `_prefix_sums`) for each candidate range.

    Inside the range the rounding error is uniform (step²/12); outside it is the clipping distance². The
    clipped sums come from the prefix sums — Σ n (c − hi)² over c > hi is Σnc² − 2·hi·Σnc + hi²·Σn there —
    so a candidate costs a binary search, not a pass over 4,096 bins."""
    c, k0, k1, k2 = sums
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    a = np.searchsorted(c, lo, side="left")  # bins [0, a) lie below lo
    b = np.searchsorted(c, hi, side="right")  # bins [b, end) lie above hi
    below = lo**2 * k0[a] - 2 * lo * k1[a] + k2[a]
    above = (k2[-1] - k2[b]) - 2 * hi * (k1[-1] - k1[b]) + hi**2 * (k0[-1] - k0[b])
    inside = (k0[b] - k0[a]) * ((hi - lo) / levels) ** 2 / 12.0
    return np.maximum(below, 0.0) + np.maximum(above, 0.0) + inside


def _descend(s: TensorStats, lo_cands: np.ndarray, hi_cands: np.ndarray, levels: int) -> tuple[float, float]:
    """Coordinate descent over candidate lower/upper clips (each side in turn, a few rounds): tails on
    the two sides of a tensor are usually very different, so they are clipped independently."""
    sums = _prefix_sums(s)
    lo, hi = float(lo_cands[-1]), float(hi_cands[-1])  # start from the widest range
    for _ in range(3):
        hi = float(hi_cands[np.argmin(_sq_error(sums, np.full(len(hi_cands), lo), hi_cands, levels))])
        lo = float(lo_cands[np.argmin(_sq_error(sums, lo_cands, np.full(len(lo_cands), hi), levels))])
    return lo, hi


def mse(s: TensorStats, levels: int = 255, candidates: int = 100) -> tuple[float, float]:
    """IFMR-like: clip min and max by ratios in (0, 1], keeping the pair with the least expected MSE."""
    ratios = np.linspace(1.0 / candidates, 1.0, candidates)
    return _descend(s, s.min * ratios, s.max * ratios, levels)


def histogram(s: TensorStats, levels: int = 255, candidates: int = 100) -> tuple[float, float]:
    """HFMG-like: candidate clips are the merged histogram's bin edges that cut off a given tail mass
    (10⁻⁷ … 2 %, log-spaced), so the search resolves rare outliers that ratio steps would jump over."""
    tail = np.concatenate([[0.0], np.logspace(-7, np.log10(0.02), candidates - 1)])[::-1]
    cdf = np.cumsum(s.counts) / max(s.total, 1)
    edges = s.edges
    hi = np.minimum(edges[1:][np.minimum(np.searchsorted(cdf, 1.0 - tail), len(cdf) - 1)], s.max)
    lo = np.maximum(edges[:-1][np.searchsorted(cdf, tail, side="right")], s.min)
    if s.min >= 0:
        lo = np.full(len(tail), s.min)
    hi[-1], lo[-1] = s.max, s.min  # zero tail mass means exactly the observed extremes
    return _descend(s, lo, hi, levels)


def entropy(s: TensorStats, levels: int = 255, stride: int = 16) -> tuple[float, float]:
    """TensorRT-style KL calibration on |x|: the threshold whose quantized distribution is closest to the data."""
    n = len(s.counts)
    half = s.counts[n // 2 :] + s.counts[: n // 2][::-1]  # fold negative bins onto |x|
    # The first bin holds the exact zeros of ReLU outputs, a spike that every range represents
    # exactly (it is the zero point); left in, it drags the KL optimum down to the narrowest range.
    half[0] = 0
    bin_width = 2 * s.radius / n
    last = int(np.nonzero(half)[0][-1]) + 1 if half.any() else 1
    q_levels = levels + 1 if s.min >= 0 else (levels + 1) // 2
    if last <= q_levels:
        return s.min, s.max
    best_kl, best_t = np.inf, last
    for t in range(q_levels, last + 1, max(1, min(stride, (last - q_levels) // 64 or 1))):
        p = half[:t].astype(np.float64).copy()
        p[-1] += half[t:last].sum()
        bounds = np.linspace(0, t, q_levels + 1).astype(np.int64)
        bounds = np.unique(bounds)
        chunk_sum = np.add.reduceat(half[:t].astype(np.float64), bounds[:-1])
        nonzero = half[:t] > 0
        chunk_nz = np.add.reduceat(nonzero.astype(np.float64), bounds[:-1])
        per_bin = np.divide(chunk_sum, chunk_nz, out=np.zeros_like(chunk_sum), where=chunk_nz > 0)
        q = np.repeat(per_bin, np.diff(bounds)) * nonzero
        mask = p > 0
        pn, qn = p[mask] / p.sum(), q[mask] / max(q.sum(), 1e-12)
        kl = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-12))))
        if kl < best_kl:
            best_kl, best_t = kl, t
    threshold = best_t * bin_width
    return max(s.min, -threshold), min(s.max, threshold)


def _valued(algorithm: Callable[..., tuple[float, float]]) -> Callable[..., tuple[float, float]]:
    """`algorithm`, answering (0, 0) for a tensor calibration saw no finite value in (an empty tensor: any grid
    quantizes its nothing exactly; one that is all NaN is the FP32 model's problem, not its range's)."""

    @functools.wraps(algorithm)
    def ranged(s: TensorStats, *args, **kwargs) -> tuple[float, float]:
        return (0.0, 0.0) if s.total == 0 else algorithm(s, *args, **kwargs)

    return ranged


ALGORITHMS: dict[str, Callable[..., tuple[float, float]]] = {
    name: _valued(fn)
    for name, fn in {"minmax": minmax, "percentile": percentile, "mse": mse, "entropy": entropy,
                     "histogram": histogram}.items()
}
