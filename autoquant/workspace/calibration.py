"""Calibration, once per model and data: one pass of the FP32 model over the calibration data records every float
activation's statistics (cached on disk), from which every range algorithm gives a tensor's scale and zero point,
memoised per (tensor, algorithm)."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import MutableMapping

from ..calibrate.cache import cached_arrays
from ..calibrate.collect import collect_stats
from ..calibrate.ranges import ALGORITHMS
from ..calibrate.stats import NUM_BINS, TensorStats, stats_from_arrays, stats_to_arrays
from ..errors import DataError, PlanError
from ..quantize import modes
from ..quantize.plan import QuantPlan
from ..quantize.scales import ActivationParams, params_from_range
from .model import PreparedData

STATS_VERSION = 2
MAX_QUANTIZABLE = 1e30  # beyond it float32 scale arithmetic overflows
log = logging.getLogger(__name__)


class Calibration:
    def __init__(self, data: PreparedData, seconds: MutableMapping[str, float]):
        self.data, self.exp, self._seconds = data, data.exp, seconds

    @functools.cached_property
    def stats(self) -> dict[str, TensorStats]:
        d = self.data
        calib = d.splits.calibration

        def build():
            t0 = time.perf_counter()
            stats = collect_stats(d.model, d.prepared.inputs, d.graph.float_tensors, calib,
                                  batches=d.calibration_batches, threads=d.threads)
            inputs = {layer.input for layer in d.graph.layers}
            broken = [t for t, s in stats.items() if t in inputs and s.total == 0 and s.nonfinite]
            if broken:  # never cache statistics that would quantize every later run wrongly
                raise DataError(f"calibration saw only NaN or Inf in {len(broken)} tensor(s) that layers read (e.g. "
                                f"{broken[0]}): the FP32 model computes them on this data; check the model and the "
                                "calibration data")
            empty = [t for t, s in stats.items() if s.total == 0 and not s.nonfinite]
            if empty:
                log.info("%d tensor(s) held no values on the calibration data (e.g. %s): nothing to quantize there",
                         len(empty), empty[0])
            self._seconds["calibration"] = time.perf_counter() - t0
            log.info("calibrated %d tensors on %d samples in %.1f s", len(stats), len(calib),
                     self._seconds["calibration"])
            return stats_to_arrays(stats)

        batch = d.calibration_batches.size
        key = f"stats-v{STATS_VERSION}:{d.model_key}:{calib.sha256()}:{NUM_BINS}:batch{batch}"
        path = self.exp.cache / "stats" / f"{d.model_key[:16]}-{calib.sha256()[:16]}.npz"
        return stats_from_arrays(cached_arrays(path, key, build))

    @functools.cache  # noqa: B019 - one per workspace; the memo lives as long as it
    def range_params(self, tensor: str, algorithm: str) -> ActivationParams:
        q = self.exp.quantization
        extra = {"pct": q.percentile} if algorithm == "percentile" else {}
        lo, hi = ALGORITHMS[algorithm](self.stats[tensor], 255, **extra)
        if not (abs(lo) < MAX_QUANTIZABLE and abs(hi) < MAX_QUANTIZABLE):
            # e.g. an attention mask's -3.4e38 "minus infinity": no 8-bit grid spans it usefully
            raise PlanError(f"tensor {tensor} holds values up to {max(abs(lo), abs(hi)):.3g}: it cannot be quantized; "
                            "keep the layers that read it float")
        return params_from_range(lo, hi, q.activation_type)

    def precompute_ranges(self, algorithms) -> None:
        """Compute every tensor's range for each algorithm up front, so trials only look them up (a tensor
        that cannot be quantized is left to fail the trial that quantizes it)."""
        for algorithm in algorithms:
            for tensor in self.data.graph.float_tensors:
                with contextlib.suppress(PlanError):
                    self.range_params(tensor, algorithm)

    def activations(self, plan: QuantPlan) -> tuple[dict[str, ActivationParams], dict[str, str]]:
        """(scale, zero point) and the algorithm that set it, for every activation tensor the plan quantizes."""
        algorithms = modes.activation_tensors(self.data.model, self.data.graph, plan)
        return {t: self.range_params(t, a) for t, a in algorithms.items()}, algorithms
