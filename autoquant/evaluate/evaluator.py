"""Evaluator: runs a model on the eval subset with onnxruntime and scores it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..calibrate.collect import check_input, session_options
from ..config import EvalConfig
from ..data import Dataset
from ..errors import DataError, ModelError, first_line
from ..graph.ingest import ModelInput
from .latency import interleaved_latency_ms
from .metrics import Metric


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # the experiment's metric (top-1 in percent by default)
    outputs: np.ndarray  # first model output over the whole eval subset


class Evaluator:
    def __init__(self, data: Dataset, metric: Metric, model_input: ModelInput, cfg: EvalConfig):
        check_input(data.x, model_input, "eval")
        self.data, self.metric, self.model_input, self.cfg = data, metric, model_input, cfg
        self.threads = cfg.threads or os.cpu_count() or 1

    def session(self, model: onnx.ModelProto, optimized_path: Path | None = None) -> ort.InferenceSession:
        """A session with onnxruntime's default graph optimizations; `optimized_path` keeps the graph it runs."""
        opts = session_options(self.threads)
        if optimized_path is not None:
            opts.optimized_model_filepath = str(optimized_path)
        try:
            return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            raise ModelError(f"onnxruntime cannot load the model: {first_line(exc, 200)}") from exc

    def score(self, sess: ort.InferenceSession) -> EvalResult:
        name = sess.get_inputs()[0].name
        outputs = np.concatenate(
            [sess.run(None, {name: xb.astype(np.float32, copy=False)})[0] for xb in self.data.batches(self.cfg.batch_size)]
        )
        if not np.isfinite(outputs).all():
            raise DataError("the model produced NaN or Inf on the eval data")
        return EvalResult(float(self.metric(outputs, self.data.y)), outputs)

    def latency_ms(self, *sessions: ort.InferenceSession) -> list[float]:
        batch = self.data.x[: self.cfg.latency_batch_size].astype(np.float32, copy=False)
        return interleaved_latency_ms(list(sessions), batch, repeats=self.cfg.latency_repeats)
