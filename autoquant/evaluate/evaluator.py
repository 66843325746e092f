"""Evaluator: runs a model on the eval subset with onnxruntime and scores the chosen output."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..calibrate.collect import check_inputs
from ..config import EvalConfig
from ..data import Dataset
from ..errors import ConfigError, DataError
from ..graph.ingest import ModelInput
from ..runtime import Batches, session
from .metrics import Metric
from .timer import Timer


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # the experiment's metric (top-1 in percent by default)
    outputs: np.ndarray  # the scored output over the whole eval subset, batch on axis 0


class Evaluator:
    def __init__(self, data: Dataset, metric: Metric, inputs: tuple[ModelInput, ...], outputs: tuple[str, ...],
                 cfg: EvalConfig, reference: Callable[[], np.ndarray], batches: Batches, latency_batch: int):
        """`batches`: how eval data is fed (eval.batch_size, or the size the model takes); `latency_batch` the
        samples per timed run (eval.latency_batch_size, or that size)."""
        check_inputs(data, inputs, "eval")
        if cfg.output is not None and cfg.output not in outputs:
            raise ConfigError(f"eval.output '{cfg.output}' is not an output of the model: use one of {', '.join(outputs)}")
        self.data, self.metric, self.cfg = data, metric, cfg
        self.reference = reference  # the FP32 model's outputs on this data, computed (or read) when first needed
        self.feed_names = [i.name for i in inputs]
        self.output = cfg.output or outputs[0]
        self.threads = cfg.threads or os.cpu_count() or 1
        self.batches, self.latency_batch = batches, latency_batch

    def session(self, model: onnx.ModelProto | bytes, optimized_path: Path | None = None) -> ort.InferenceSession:
        """A session with onnxruntime's default graph optimizations; `optimized_path` keeps the graph it runs."""
        return session(model, self.threads, optimized_path)

    def _feed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: batch[n] for n in self.feed_names}

    def _fed(self, data: Dataset) -> Dataset:
        return data.with_inputs(self._feed(data.inputs))

    def outputs(self, sess: ort.InferenceSession, data: Dataset | None = None, head: np.ndarray | None = None,
                rows: int | None = None, shown: str | None = None) -> np.ndarray:
        """The scored output over the eval data (or `data`, e.g. a subset of it), batch moved to axis 0.
        `rows` stops after the first that many samples; `head` holds this session's outputs on the data's first
        whole batches, computed before, which are not run again; `shown` titles a progress bar."""
        data = self.data if data is None else data
        axis, size = self.cfg.output_batch_axis, self.batches.size
        done = 0 if head is None else len(head)
        if done % size:
            raise ValueError(f"head of {done} rows is not whole batches of {size}")
        stop = len(data) if rows is None else min(len(data), rows)
        parts = [] if head is None else [head]
        rest = data if not done and stop == len(data) else data.subset(np.arange(done, stop))
        for (out,), feed, n in self.batches.run(sess, [self.output], self._fed(rest), "eval", shown=shown):
            if not isinstance(out, np.ndarray):
                raise ConfigError(f"output '{self.output}' is a {type(out).__name__}, not a tensor: set eval.output to "
                                  "a tensor output of the model")
            if out.ndim <= axis:
                raise ConfigError(f"eval.output_batch_axis {axis} does not exist: output '{self.output}' has shape "
                                  f"{out.shape}")
            fed = len(next(iter(feed.values())))
            if out.shape[axis] != fed:
                raise ConfigError(f"output '{self.output}' has {out.shape[axis]} rows on axis {axis} for a batch of {fed} "
                                  "samples: set eval.output_batch_axis to the output's batch axis")
            parts.append(np.moveaxis(out, axis, 0)[:n])
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) > 1:
            raise DataError(f"output '{self.output}' has different shapes across eval batches ({sorted(shapes)[:2]}): "
                            "give inputs of one size (e.g. pad sequences to one length)")
        outputs = np.concatenate(parts)
        if np.issubdtype(outputs.dtype, np.floating) and not np.isfinite(outputs).all():
            raise DataError("the model produced NaN or Inf on the eval data")
        return outputs

    def score(self, sess: ort.InferenceSession, head: np.ndarray | None = None) -> EvalResult:
        """The metric of the session's outputs, against the labels and the FP32 model's outputs; `head` as in
        outputs()."""
        outputs = self.outputs(sess, head=head)
        return EvalResult(self.metric(outputs, self.data.y, self.reference()), outputs)

    def latency_feed(self) -> dict[str, np.ndarray]:
        """The batch latency is measured on: the first latency_batch samples (padded where the eval set is smaller
        than the one batch size the model takes)."""
        return Batches(self.latency_batch, self.batches.fixed).head(self._fed(self.data))

    @functools.cached_property
    def timer(self) -> Timer:
        timer = Timer(self.threads)
        timer.feed(self.latency_feed())
        return timer

    def close(self) -> None:
        """End the timing process, if one runs (it starts again when next needed): a library call that measured
        leaves no process behind."""
        timer = self.__dict__.pop("timer", None)
        if timer is not None:
            timer.close()

    def latency_rounds(self, *models: bytes, enough=None, repeats: int = 0) -> np.ndarray:
        """Every round's milliseconds (rounds × models) of serialized models timed side by side (evaluate/timer.py),
        in max(repeats, eval.latency_repeats) rounds; `enough` as in Timer.rounds."""
        keys = [self.timer.load(m) for m in models]
        return self.timer.rounds(keys, max(repeats, self.cfg.latency_repeats), enough)

    def latency_ms(self, *models: bytes) -> list[float]:
        """Median milliseconds per run of each model, timed side by side."""
        return [float(m) for m in np.median(self.latency_rounds(*models), axis=0)]
