"""Latency: median wall time of a fixed batch, warm-up excluded; several sessions are timed interleaved
so that their ratio is not skewed by the machine's load drifting between two separate measurements."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort


def interleaved_latency_ms(
    sessions: list[ort.InferenceSession], batch: np.ndarray, *, repeats: int, warmup: int = 5
) -> list[float]:
    """Median milliseconds per run of `batch` for each session, runs alternating between sessions."""
    feeds = [{s.get_inputs()[0].name: batch} for s in sessions]
    for _ in range(warmup):
        for s, feed in zip(sessions, feeds):
            s.run(None, feed)
    times = [[] for _ in sessions]
    for _ in range(repeats):
        for i, (s, feed) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, feed)
            times[i].append((time.perf_counter() - t0) * 1000.0)
    return [float(np.median(t)) for t in times]
