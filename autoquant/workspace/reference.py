"""The FP32 reference, once per model and eval data: the evaluator (the eval split, the metric, how the model is
fed and timed) and the FP32 model's outputs and metric on the eval split (cached on disk), which every plan is
scored against; and the same on the confirmation split, which only the export's confirmation reads
(search/confirm.py)."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, MutableMapping

import numpy as np

from ..calibrate.cache import cached_arrays
from ..data import Dataset
from ..evaluate.evaluator import EvalResult, Evaluator
from ..evaluate.metrics import resolve_metric
from ..runtime import Batches
from ..sources import experiment_dir
from .model import PreparedData


class Reference:
    def __init__(self, data: PreparedData, seconds: MutableMapping[str, float]):
        self.data, self.exp, self._seconds = data, data.exp, seconds

    def _evaluator(self, data: Dataset, reference: Callable[[], np.ndarray]) -> Evaluator:
        d, e = self.data, self.exp.eval
        metric = resolve_metric(e.metric, experiment_dir(self.exp))
        return Evaluator(data, metric, d.prepared.inputs, d.prepared.outputs, e, reference,
                         Batches(d.fixed_batch or e.batch_size, d.fixed_batch is not None),
                         d.fixed_batch or e.latency_batch_size)

    def _reference(self, evaluator: Evaluator, data: Dataset, what: str) -> EvalResult:
        """FP32's outputs and metric on `data`, cached on disk by model, data and metric."""
        d, e = self.data, self.exp.eval

        def build():
            t0 = time.perf_counter()
            outputs = evaluator.outputs(evaluator.session(d.fp32_model), shown=f"FP32 {what}")
            accuracy = evaluator.metric(outputs, data.y, outputs)  # against itself: agreement 100 %
            self._seconds["reference"] = self._seconds.get("reference", 0.0) + time.perf_counter() - t0
            return {"accuracy": np.array(accuracy), "outputs": outputs}

        key = f"reference:{d.sha}:{data.sha256()}:{e.metric}:{e.output}:{e.output_batch_axis}"
        metric = hashlib.sha256(key.encode()).hexdigest()[:8]
        path = self.exp.cache / "reference" / f"{d.sha[:16]}-{data.sha256()[:16]}-{metric}.npz"
        arrays = cached_arrays(path, key, build)
        return EvalResult(float(arrays["accuracy"]), arrays["outputs"])

    @functools.cached_property
    def evaluator(self) -> Evaluator:
        return self._evaluator(self.data.splits.eval, lambda: self.reference.outputs)

    @functools.cached_property
    def reference(self) -> EvalResult:
        return self._reference(self.evaluator, self.data.splits.eval, "reference")

    @functools.cached_property
    def confirm_evaluator(self) -> Evaluator | None:
        """The evaluator of the confirmation split (None without one); it times nothing."""
        confirm = self.data.splits.confirm
        return None if confirm is None else self._evaluator(confirm, lambda: self.confirm_reference.outputs)

    @functools.cached_property
    def confirm_reference(self) -> EvalResult:
        return self._reference(self.confirm_evaluator, self.data.splits.confirm, "confirmation reference")

    def close(self) -> None:
        if "evaluator" in self.__dict__:
            self.evaluator.close()
