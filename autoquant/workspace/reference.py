"""The FP32 reference, once per model and eval data: the evaluator (the eval split, the metric, how the model is
fed and timed) and the FP32 model's outputs and metric on the eval split (cached on disk), which every plan is
scored against."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import MutableMapping

import numpy as np

from ..calibrate.cache import cached_arrays
from ..evaluate.evaluator import EvalResult, Evaluator
from ..evaluate.metrics import resolve_metric
from ..runtime import Batches
from ..sources import experiment_dir
from .model import PreparedData


class Reference:
    def __init__(self, data: PreparedData, seconds: MutableMapping[str, float]):
        self.data, self.exp, self._seconds = data, data.exp, seconds

    @functools.cached_property
    def evaluator(self) -> Evaluator:
        d = self.data
        metric = resolve_metric(self.exp.eval.metric, experiment_dir(self.exp))
        e = self.exp.eval
        return Evaluator(d.splits.eval, metric, d.prepared.inputs, d.prepared.outputs, e, lambda: self.reference.outputs,
                         Batches(d.fixed_batch or e.batch_size, d.fixed_batch is not None),
                         d.fixed_batch or e.latency_batch_size)

    @functools.cached_property
    def reference(self) -> EvalResult:
        d = self.data
        ev = d.splits.eval

        def build():
            t0 = time.perf_counter()
            outputs = self.evaluator.outputs(self.evaluator.session(d.fp32_model), shown="FP32 reference")
            accuracy = self.evaluator.metric(outputs, ev.y, outputs)  # against itself: agreement 100 %
            self._seconds["reference"] = time.perf_counter() - t0
            return {"accuracy": np.array(accuracy), "outputs": outputs}

        e = self.exp.eval
        key = f"reference:{d.sha}:{ev.sha256()}:{e.metric}:{e.output}:{e.output_batch_axis}"
        metric = hashlib.sha256(key.encode()).hexdigest()[:8]
        path = self.exp.cache / "reference" / f"{d.sha[:16]}-{ev.sha256()[:16]}-{metric}.npz"
        arrays = cached_arrays(path, key, build)
        return EvalResult(float(arrays["accuracy"]), arrays["outputs"])

    def close(self) -> None:
        if "evaluator" in self.__dict__:
            self.evaluator.close()
