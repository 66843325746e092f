"""Workspace: everything about one experiment that does not depend on the plan, computed once.

Pre-processed model, graph analysis, activation statistics (one calibration pass, cached on disk),
FP32 reference (cached on disk) and a memo of ranges per (tensor, algorithm), each computed when first
needed. Building a plan's model from here never runs calibration data through a network.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import onnx

from .calibrate.cache import cached_arrays
from .calibrate.collect import collect_stats
from .calibrate.ranges import ALGORITHMS
from .calibrate.stats import NUM_BINS, TensorStats, stats_from_arrays, stats_to_arrays
from .config import Experiment
from .data import Splits
from .errors import DataError
from .evaluate.evaluator import EvalResult, Evaluator
from .evaluate.metrics import resolve_metric
from .graph.ingest import PreparedModel, prepare
from .graph.layers import GraphInfo, analyze
from .quantize.build import ActivationParams, build_qdq, params_from_range, tensor_algorithms
from .quantize.plan import QuantPlan
from .quantize.weight_range import resolve as resolve_weight_range
from .sources import load_splits, model_path

STATS_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timings:
    """Seconds spent on per-study work in this process (0 when read from cache or not needed yet)."""

    prepare: float
    calibration: float
    reference: float


class Workspace:
    """Per-experiment state, each piece computed on first use and then kept: a command pays only for
    what it needs (`autoquant layers` loads no data for an ONNX model and never scores FP32)."""

    def __init__(self, exp: Experiment):
        self.exp = exp
        self._seconds: dict[str, float] = {}

    @property
    def timings(self) -> Timings:
        return Timings(*(self._seconds.get(k, 0.0) for k in ("prepare", "calibration", "reference")))

    @functools.cached_property
    def splits(self) -> Splits:
        return load_splits(self.exp)

    @functools.cached_property
    def prepared(self) -> PreparedModel:
        t0 = time.perf_counter()
        prepared = prepare(model_path(self.exp, lambda: self.splits), self.exp.cache)
        self._seconds["prepare"] = time.perf_counter() - t0
        return prepared

    @functools.cached_property
    def model(self) -> onnx.ModelProto:
        return self.prepared.load()

    @functools.cached_property
    def graph(self) -> GraphInfo:
        return analyze(self.model)

    @functools.cached_property
    def evaluator(self) -> Evaluator:
        return Evaluator(self.splits.eval, resolve_metric(self.exp.eval.metric), self.prepared.input, self.exp.eval)

    @property
    def sha(self) -> str:
        return self.prepared.sha256

    @functools.cached_property
    def stats(self) -> dict[str, TensorStats]:
        calib = self.splits.calibration
        threads = self.exp.eval.threads or os.cpu_count() or 1

        def build():
            t0 = time.perf_counter()
            stats = collect_stats(self.model, self.prepared.input, self.graph.float_tensors, calib,
                                  batch_size=self.exp.quantization.calibration_batch_size, threads=threads)  # fmt: skip
            empty = [t for t, s in stats.items() if s.total == 0 or not np.isfinite([s.min, s.max]).all()]
            if empty:  # never cache statistics that would quantize every later run wrongly
                raise DataError(f"calibration saw no finite values for {len(empty)} tensor(s) (e.g. {empty[0]}): "
                                "check data.calibration_size and quantization.calibration_batch_size")  # fmt: skip
            self._seconds["calibration"] = time.perf_counter() - t0
            log.info("calibrated %d tensors on %d samples in %.1f s", len(stats), len(calib),
                     self._seconds["calibration"])  # fmt: skip
            return stats_to_arrays(stats)

        batch = self.exp.quantization.calibration_batch_size
        key = f"stats-v{STATS_VERSION}:{self.sha}:{calib.sha256()}:{NUM_BINS}:batch{batch}"
        path = self.exp.cache / "stats" / f"{self.sha[:16]}-{calib.sha256()[:16]}.npz"
        return stats_from_arrays(cached_arrays(path, key, build))

    @functools.cached_property
    def reference(self) -> EvalResult:
        ev = self.splits.eval

        def build():
            t0 = time.perf_counter()
            res = self.evaluator.score(self.evaluator.session(self.model))
            self._seconds["reference"] = time.perf_counter() - t0
            return {"accuracy": np.array(res.accuracy), "outputs": res.outputs}

        key = f"reference:{self.sha}:{ev.sha256()}:{self.exp.eval.metric}"
        metric = hashlib.sha256(self.exp.eval.metric.encode()).hexdigest()[:8]
        path = self.exp.cache / "reference" / f"{self.sha[:16]}-{ev.sha256()[:16]}-{metric}.npz"
        arrays = cached_arrays(path, key, build)
        return EvalResult(float(arrays["accuracy"]), arrays["outputs"])

    @functools.cache  # noqa: B019 - one Workspace per study; the memo lives as long as it
    def range_params(self, tensor: str, algorithm: str) -> ActivationParams:
        q = self.exp.quantization
        extra = {"pct": q.percentile} if algorithm == "percentile" else {}
        lo, hi = ALGORITHMS[algorithm](self.stats[tensor], 255, **extra)
        return params_from_range(lo, hi, q.activation_type)

    def precompute_ranges(self, algorithms) -> None:
        """Compute every tensor's range for each algorithm up front, so trials only look them up."""
        for algorithm in algorithms:
            for tensor in self.graph.float_tensors:
                self.range_params(tensor, algorithm)

    def activations(self, plan: QuantPlan) -> tuple[dict[str, ActivationParams], dict[str, str]]:
        """(scale, zero point) and the algorithm that set it, for every activation tensor the plan quantizes."""
        algorithms = tensor_algorithms(self.model, self.graph, plan)
        return {t: self.range_params(t, a) for t, a in algorithms.items()}, algorithms

    @functools.cached_property
    def weight_range(self) -> str:
        """"full" or "reduced": quantization.weight_range with `auto` resolved for this CPU."""
        q = self.exp.quantization
        resolved = resolve_weight_range(q.weight_range, q.activation_type)
        if q.weight_range == "auto" and resolved == "reduced":
            log.info("this CPU's uint8 x int8 kernels saturate (no VNNI): weights use 7 bits "
                     "(quantization.weight_range: full overrides)")  # fmt: skip
        return resolved

    def build(self, plan: QuantPlan, params: dict[str, ActivationParams] | None = None) -> onnx.ModelProto:
        """The plan's QDQ model; `params` are the plan's activations() when the caller already has them."""
        params = params if params is not None else self.activations(plan)[0]
        return build_qdq(self.model, self.graph, plan, params, self.exp.quantization.activation_type, self.weight_range)
