"""The model and data of an experiment, prepared once: the data splits (bound to the model's inputs), the
pre-processed FP32 model and the one plans are built from (smoothed, with SmoothQuant), its graph analysis, and the
batches the model takes."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import MutableMapping

import onnx

from ..calibrate.cache import cached_arrays
from ..calibrate.collect import observed_shapes
from ..config import Experiment
from ..data import Splits
from ..graph.ingest import PreparedModel, prepare
from ..graph.layers import GraphInfo, ShapesUnknown, analyze
from ..quantize.smoothing import Smoothing, channel_absmax, smooth, smoothable, smoothing_scales
from ..runtime import Batches, declared_batch
from ..sources import bind_inputs, load_splits, model_path

log = logging.getLogger(__name__)


class PreparedData:
    """The experiment's model and data, each piece made when first asked for."""

    def __init__(self, exp: Experiment, seconds: MutableMapping[str, float]):
        self.exp, self._seconds = exp, seconds

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
        confirm = bind_inputs(s.confirm, inputs, "confirmation") if s.confirm is not None else None
        rest = bind_inputs(s.rest, inputs, "data") if s.rest is not None else None
        return Splits(bind_inputs(s.calibration, inputs, "calibration"), bind_inputs(s.eval, inputs, "eval"), train,
                      confirm, rest)

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

    @property
    def sha(self) -> str:
        return self.prepared.sha256

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
            channel_absmax(self.fp32_model, tensors, calib, self.calibration_batches, self.threads).values())})
        absmax = {t: absmax[f"t{i}"] for i, t in enumerate(tensors)}
        alpha = float(self.exp.quantization.smoothquant_alpha)
        model, report = smooth(self.fp32_model, graph, smoothing_scales(self.fp32_model, graph, absmax, alpha), alpha)
        log.info("SmoothQuant (alpha %.2f): %d input(s) smoothed, %d folded into their LayerNorm, %d through an "
                 "inserted Mul", alpha, len(report.scales), len(report.folded), len(report.inserted))
        return model, report

    @property
    def threads(self) -> int:
        return self.exp.eval.threads or os.cpu_count() or 1

    def _analyze(self, model: onnx.ModelProto) -> GraphInfo:
        try:
            return analyze(model)
        except ShapesUnknown as exc:
            # Shapes computed from the data (dynamic height/width, sequence length): one real batch says.
            seen, batch = observed_shapes(model, self.splits.calibration, self.calibration_batches, self.threads)
            log.info("shape inference could not size %d tensor(s) (e.g. %s); using the shapes of a calibration "
                     "batch of %d", len(exc.tensors), exc.tensors[0], batch)
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

