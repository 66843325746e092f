"""Workspace: everything about one experiment that does not depend on the plan, computed once.

Pre-processed model, graph analysis, activation statistics (one calibration pass, cached on disk),
FP32 reference (cached on disk) and a memo of ranges per (tensor, algorithm), each computed when first
needed. Building a plan's model from here never runs calibration data through a network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import onnx

from .calibrate.cache import cached_arrays
from .calibrate.collect import collect_stats, observed_shapes
from .calibrate.ranges import ALGORITHMS
from .calibrate.stats import NUM_BINS, TensorStats, stats_from_arrays, stats_to_arrays
from .config import Experiment
from .data import Splits
from .errors import DataError, PlanError
from .evaluate.evaluator import EvalResult, Evaluator
from .evaluate.metrics import check_metric, resolve_metric
from .finetune.weights import with_weights
from .graph.ingest import PreparedModel, prepare
from .graph.layers import GraphInfo, ShapesUnknown, analyze
from .quantize import modes
from .quantize.build import build_model
from .quantize.plan import QuantPlan
from .quantize.recovery import recovers
from .quantize.recovery.tables import RecoverySource, RecoveryTables
from .quantize.scales import ActivationParams, params_from_range
from .quantize.smoothing import Smoothing, channel_absmax, smooth, smoothable, smoothing_scales
from .quantize.weight_range import TARGET_ENV
from .quantize.weight_range import resolve as resolve_weight_range
from .runtime import Batches, declared_batch
from .sources import bind_inputs, experiment_dir, load_splits, model_path
from .sources import check as check_sources

STATS_VERSION = 2
MAX_QUANTIZABLE = 1e30  # beyond it float32 scale arithmetic overflows
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timings:
    """Seconds spent on per-study work in this process (0 when read from cache or not needed yet)."""

    prepare: float
    calibration: float
    reference: float
    sensitivity: float = 0.0  # per-layer errors and, under objective latency, the latency table
    conclusion: float = 0.0  # after the trials: timing the front, choosing and writing the export


class Workspace:
    """Per-experiment state, each piece computed on first use and then kept: a command pays only for
    what it needs (`autoquant layers` loads no data for an ONNX model and never scores FP32)."""

    def __init__(self, exp: Experiment):
        check_sources(exp)  # an unknown model or data source, or metric, fails before any work
        check_metric(exp.eval.metric)
        self.exp = exp
        self._seconds: dict[str, float] = {}

    def close(self) -> None:
        """Release what outlives a call: the timing process (it starts again if the workspace times more)."""
        if "evaluator" in self.__dict__:
            self.evaluator.close()

    @property
    def timings(self) -> Timings:
        return Timings(**{f.name: self._seconds.get(f.name, 0.0) for f in dataclasses.fields(Timings)})

    def add_seconds(self, phase: str, seconds: float) -> None:
        """Count time a caller spent on a phase of Timings for this workspace (a study's sensitivity pass)."""
        self._seconds[phase] = self._seconds.get(phase, 0.0) + seconds

    @functools.cached_property
    def source_splits(self) -> Splits:
        """The splits as the data source gives them (built-in models train on these)."""
        trained_here = self.exp.model.builtin is not None  # its inputs are known once it is trained on these
        return load_splits(self.exp, None if trained_here else tuple(i.name for i in self.prepared.inputs))

    @functools.cached_property
    def splits(self) -> Splits:
        """The splits bound to the model's inputs: one array per input, named and typed as it declares."""
        s, inputs = self.source_splits, self.prepared.inputs
        train = bind_inputs(s.train, inputs, "train") if s.train is not None else None
        return Splits(bind_inputs(s.calibration, inputs, "calibration"), bind_inputs(s.eval, inputs, "eval"), train)

    @functools.cached_property
    def prepared(self) -> PreparedModel:
        t0 = time.perf_counter()
        prepared = prepare(model_path(self.exp, lambda: self.source_splits), self.exp.cache)
        self._seconds["prepare"] = time.perf_counter() - t0
        return prepared

    @functools.cached_property
    def fp32_model(self) -> onnx.ModelProto:
        """The pre-processed FP32 model: the reference every plan is measured against."""
        return self.prepared.load()

    @property
    def model(self) -> onnx.ModelProto:
        """The model plans are built from: the FP32 model, smoothed when quantization.smoothquant_alpha is set."""
        return self._smoothed[0] if self.exp.quantization.smoothquant_alpha else self.fp32_model

    @property
    def smoothing(self) -> Smoothing | None:
        return self._smoothed[1] if self.exp.quantization.smoothquant_alpha else None

    @functools.cached_property
    def model_key(self) -> str:
        """Identity of `model` for caches of what depends on it (statistics, per-layer errors)."""
        if not self.exp.quantization.smoothquant_alpha:
            return self.sha
        return hashlib.sha256(self.sha.encode() + self.model.SerializeToString(deterministic=True)).hexdigest()

    @functools.cached_property
    def _smoothed(self) -> tuple[onnx.ModelProto, Smoothing]:
        graph = self._analyze(self.fp32_model)
        tensors = sorted(smoothable(graph))
        calib = self.splits.calibration
        key = f"channel-absmax:{self.sha}:{calib.sha256()}:{tensors}"
        path = self.exp.cache / "smoothing" / f"{self.sha[:16]}-{calib.sha256()[:16]}.npz"
        absmax = cached_arrays(path, key, lambda: {f"t{i}": v for i, v in enumerate(
            channel_absmax(self.fp32_model, tensors, calib, self.calibration_batches, self._threads).values())})  # fmt: skip
        absmax = {t: absmax[f"t{i}"] for i, t in enumerate(tensors)}
        alpha = float(self.exp.quantization.smoothquant_alpha)
        model, report = smooth(self.fp32_model, graph, smoothing_scales(self.fp32_model, graph, absmax, alpha), alpha)
        log.info("SmoothQuant (alpha %.2f): %d input(s) smoothed, %d folded into their LayerNorm, %d through an "
                 "inserted Mul", alpha, len(report.scales), len(report.folded), len(report.inserted))  # fmt: skip
        return model, report

    @property
    def _threads(self) -> int:
        return self.exp.eval.threads or os.cpu_count() or 1

    def _analyze(self, model: onnx.ModelProto) -> GraphInfo:
        try:
            return analyze(model)
        except ShapesUnknown as exc:
            # Shapes computed from the data (dynamic height/width, sequence length): one real batch says.
            seen, batch = observed_shapes(model, self.splits.calibration, self.calibration_batches, self._threads)
            log.info("shape inference could not size %d tensor(s) (e.g. %s); using the shapes of a calibration "
                     "batch of %d", len(exc.tensors), exc.tensors[0], batch)  # fmt: skip
            return analyze(model, seen, batch)

    @functools.cached_property
    def graph(self) -> GraphInfo:
        return self._analyze(self.model)

    @functools.cached_property
    def fixed_batch(self) -> int | None:
        """The one batch size the model's inputs declare (an export with batch 1), or None."""
        batch = declared_batch(self.prepared.inputs)
        if batch is not None:
            log.info("the model's inputs fix the batch size at %d: calibration, evaluation and timing use it", batch)
        return batch

    @functools.cached_property
    def calibration_batches(self) -> Batches:
        return Batches(self.fixed_batch or self.exp.quantization.calibration_batch_size, self.fixed_batch is not None)

    @functools.cached_property
    def evaluator(self) -> Evaluator:
        metric = resolve_metric(self.exp.eval.metric, experiment_dir(self.exp))
        e = self.exp.eval
        return Evaluator(self.splits.eval, metric, self.prepared.inputs, self.prepared.outputs, e,
                         lambda: self.reference.outputs, Batches(self.fixed_batch or e.batch_size, self.fixed_batch is not None),
                         self.fixed_batch or e.latency_batch_size)  # fmt: skip

    @property
    def sha(self) -> str:
        return self.prepared.sha256

    @functools.cached_property
    def stats(self) -> dict[str, TensorStats]:
        calib = self.splits.calibration
        threads = self._threads

        def build():
            t0 = time.perf_counter()
            stats = collect_stats(self.model, self.prepared.inputs, self.graph.float_tensors, calib,
                                  batches=self.calibration_batches, threads=threads)  # fmt: skip
            inputs = {layer.input for layer in self.graph.layers}
            broken = [t for t, s in stats.items() if t in inputs and s.total == 0 and s.nonfinite]
            if broken:  # never cache statistics that would quantize every later run wrongly
                raise DataError(f"calibration saw only NaN or Inf in {len(broken)} tensor(s) that layers read (e.g. "
                                f"{broken[0]}): the FP32 model computes them on this data; check the model and the "
                                "calibration data")  # fmt: skip
            empty = [t for t, s in stats.items() if s.total == 0 and not s.nonfinite]
            if empty:
                log.info("%d tensor(s) held no values on the calibration data (e.g. %s): nothing to quantize there",
                         len(empty), empty[0])  # fmt: skip
            self._seconds["calibration"] = time.perf_counter() - t0
            log.info("calibrated %d tensors on %d samples in %.1f s", len(stats), len(calib),
                     self._seconds["calibration"])  # fmt: skip
            return stats_to_arrays(stats)

        batch = self.calibration_batches.size
        key = f"stats-v{STATS_VERSION}:{self.model_key}:{calib.sha256()}:{NUM_BINS}:batch{batch}"
        path = self.exp.cache / "stats" / f"{self.model_key[:16]}-{calib.sha256()[:16]}.npz"
        return stats_from_arrays(cached_arrays(path, key, build))

    @functools.cached_property
    def reference(self) -> EvalResult:
        ev = self.splits.eval

        def build():
            t0 = time.perf_counter()
            outputs = self.evaluator.outputs(self.evaluator.session(self.fp32_model), shown="FP32 reference")
            accuracy = self.evaluator.metric(outputs, ev.y, outputs)  # against itself: agreement 100 %
            self._seconds["reference"] = time.perf_counter() - t0
            return {"accuracy": np.array(accuracy), "outputs": outputs}

        e = self.exp.eval
        key = f"reference:{self.sha}:{ev.sha256()}:{e.metric}:{e.output}:{e.output_batch_axis}"
        metric = hashlib.sha256(key.encode()).hexdigest()[:8]
        path = self.exp.cache / "reference" / f"{self.sha[:16]}-{ev.sha256()[:16]}-{metric}.npz"
        arrays = cached_arrays(path, key, build)
        return EvalResult(float(arrays["accuracy"]), arrays["outputs"])

    @functools.cache  # noqa: B019 - one Workspace per study; the memo lives as long as it
    def range_params(self, tensor: str, algorithm: str) -> ActivationParams:
        q = self.exp.quantization
        extra = {"pct": q.percentile} if algorithm == "percentile" else {}
        lo, hi = ALGORITHMS[algorithm](self.stats[tensor], 255, **extra)
        if not (abs(lo) < MAX_QUANTIZABLE and abs(hi) < MAX_QUANTIZABLE):
            # e.g. an attention mask's -3.4e38 "minus infinity": no 8-bit grid spans it usefully
            raise PlanError(f"tensor {tensor} holds values up to {max(abs(lo), abs(hi)):.3g}: it cannot be quantized; "
                            "keep the layers that read it float")  # fmt: skip
        return params_from_range(lo, hi, q.activation_type)

    def precompute_ranges(self, algorithms) -> None:
        """Compute every tensor's range for each algorithm up front, so trials only look them up (a tensor
        that cannot be quantized is left to fail the trial that quantizes it)."""
        for algorithm in algorithms:
            for tensor in self.graph.float_tensors:
                with contextlib.suppress(PlanError):
                    self.range_params(tensor, algorithm)

    def activations(self, plan: QuantPlan) -> tuple[dict[str, ActivationParams], dict[str, str]]:
        """(scale, zero point) and the algorithm that set it, for every activation tensor the plan quantizes."""
        algorithms = modes.activation_tensors(self.model, self.graph, plan)
        return {t: self.range_params(t, a) for t, a in algorithms.items()}, algorithms

    @functools.cached_property
    def weight_range(self) -> str:
        """"full" or "reduced": quantization.weight_range with `auto` resolved for this CPU."""
        q = self.exp.quantization
        resolved = resolve_weight_range(q.weight_range, q.activation_type)
        if q.weight_range == "auto" and resolved == "reduced":
            why = (f"{TARGET_ENV} says so" if os.environ.get(TARGET_ENV) else
                   "this CPU's uint8 x int8 kernels saturate (no VNNI)")  # fmt: skip
            log.info("%s: weights use 7 bits (quantization.weight_range: full overrides)", why)
        return resolved

    @functools.cached_property
    def build_cache(self) -> modes.BuildCache:
        return modes.BuildCache(self.model)

    def build(self, plan: QuantPlan, params: dict[str, ActivationParams] | None = None,
              weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:  # fmt: skip
        """The plan's QDQ model; `params` are the plan's activations() when the caller already has them; `weights`
        replace initializers of the model by name (fine-tuned ones: their grids are computed from them)."""
        params = params if params is not None else self.activations(plan)[0]
        recovering = [(layer, plan[layer.name]) for layer in self.graph.layers if recovers(plan[layer.name])]
        if recovering:  # fitted here, with a progress bar, rather than one by one inside the builder
            self.recovery.prepare(recovering)
        model = self.model if weights is None else with_weights(self.model, weights)
        return build_model(model, self.graph, plan, params, self.exp.quantization.activation_type, self.weight_range,
                           self.build_cache if weights is None else None, self.recovery)  # fmt: skip

    @functools.cached_property
    def recovery(self) -> RecoveryTables:
        """Adaptive rounding and bias shifts of this model on this calibration data, computed as plans ask."""
        return RecoveryTables(RecoverySource(
            self.model, self.model_key, self.graph, self.splits.calibration, frozenset(i.name for i in self.prepared.inputs),
            self.range_params, self.exp.quantization.activation_type, self.weight_range, self.exp.cache,
            self._threads, self.calibration_batches))  # fmt: skip
