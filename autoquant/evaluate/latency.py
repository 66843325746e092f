"""Latency: median wall time of a fixed batch, warm-up excluded; several sessions are timed interleaved
so that their ratio is not skewed by the machine's load drifting between two separate measurements."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort


def interleaved_latency_ms(
    sessions: list[ort.InferenceSession], feed: dict[str, np.ndarray] | np.ndarray, *, repeats: int, warmup: int = 2
) -> list[float]:
    """Median milliseconds per run of `feed` (inputs by name, or the one input's array) for each session,
    runs alternating between sessions. A fresh session's first run is the slow one (allocations: 1.2-1.7×
    a steady run on EfficientNet-Lite1, batch 32); from the second on its runs are steady, so two warm-up
    rounds suffice — under objective latency every trial pays for them."""
    feeds = [feed if isinstance(feed, dict) else {s.get_inputs()[0].name: feed} for s in sessions]
    for _ in range(warmup):
        for s, f in zip(sessions, feeds):
            s.run(None, f)
    times = [[] for _ in sessions]
    for _ in range(repeats):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[i].append((time.perf_counter() - t0) * 1000.0)
    return [float(np.median(t)) for t in times]
