"""How autoquant drives onnxruntime: session options, sessions on the CPU provider, and the batches a model is fed.

A model may take batches of one size only: declared (an export with its batch fixed to 1, very common) or hidden
inside (a Reshape that hard-codes the batch). Data is then fed at that size: a short last batch is padded with
copies of its last sample and the outputs of the copies are dropped (evaluation), or left out (calibration
statistics, which copies would skew).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .data import Dataset
from .errors import DataError, ModelError, first_line, runtime_reason
from .progress import bar

log = logging.getLogger(__name__)
# What the inner tensors fetched from one batch may take (calibration and the per-layer error pass read every
# activation of a batch at once): on a long-sequence model, 32 samples' activations are many gigabytes.
FETCH_BUDGET_BYTES = 1 << 30
# onnxruntime's own log of a session (severity: 2 warning, 3 error, 4 fatal). A run that fails is caught and
# reported by autoquant in one line (a batch size fixed inside the model, say); onnxruntime's error log of the
# same failure, several lines with its source location, is chatter the command line keeps off unless --verbose.
_severity = {"level": 3}


def quiet_onnxruntime(quiet: bool = True) -> None:
    """Keep onnxruntime's session logs to fatal ones (the command line, without --verbose), or to errors."""
    _severity["level"] = 4 if quiet else 2
    ort.set_default_logger_severity(_severity["level"])  # sessions onnxruntime's quantization tooling makes


def log_severity() -> int:
    return _severity["level"]


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = log_severity()
    # Idle onnxruntime threads spin for a while after each run. Several live sessions (a trial next to FP32, or
    # the models of a benchmark timed interleaved) then steal each other's cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def session(model: onnx.ModelProto | bytes, threads: int, optimized_path: Path | None = None) -> ort.InferenceSession:
    """A session with onnxruntime's default graph optimizations; `optimized_path` keeps the graph it runs."""
    opts = session_options(threads)
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    try:
        blob = model if isinstance(model, bytes) else model.SerializeToString()
        return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise ModelError(f"onnxruntime cannot load the model: {first_line(exc, 200)}") from exc


class Batches:
    """Feeds a model batch by batch: `size` samples each, `fixed` when the model declares that it takes no
    other size. A short last batch goes in as it is unless the model is fixed or refuses it after taking full
    ones (a batch size hidden inside it): then it is padded — or dropped with `drop_short`, where copies
    would skew what is computed (calibration statistics)."""

    def __init__(self, size: int, fixed: bool = False):
        self.size, self.fixed = size, fixed

    def run(self, sess: ort.InferenceSession, fetch: list[str] | None, data: Dataset, what: str, *,
            drop_short: bool = False, shown: str | None = None) -> Iterator[tuple[list, dict[str, np.ndarray], int]]:
        """(sess.run(fetch, feed), feed, real samples in it) for each batch of `data`; the outputs of padding
        copies are still in them (the caller knows each output's batch axis). `shown`: a progress bar's title (the
        one-time passes over a data set: calibration, the FP32 reference, the per-layer errors)."""
        full = 0
        progress = bar(len(data), shown, unit="sample") if shown else None
        try:
            for batch in data.batches(self.size):
                n = len(next(iter(batch.values())))
                out = self._try(sess, fetch, batch) if n < self.size and full and not self.fixed else None
                if n < self.size and self.fixed and out is None:
                    if drop_short and full:
                        log.info("the model takes batches of %d: the last %d %s sample(s) are left out", self.size, n,
                                 what)
                        return
                    batch = pad(batch, self.size)
                yield (out if out is not None else self.one(sess, fetch, batch, what)), batch, n
                full += n == self.size
                if progress is not None:
                    progress.update(n)
        finally:
            if progress is not None:
                progress.close()

    def within(self, sess: ort.InferenceSession, fetch: list[str], data: Dataset, what: str) -> Batches:
        """These batches, or smaller ones (for a model that takes any size) whose fetched tensors fit
        FETCH_BUDGET_BYTES, measured on one sample."""
        if self.fixed or self.size == 1 or not len(data):
            return self
        try:
            one = self.one(sess, fetch, data.head(1), what)
        except DataError:  # a batch size fixed inside the model: it is fed at the size configured, as it needs
            return self
        per_sample = sum(v.nbytes for v in one if isinstance(v, np.ndarray))
        size = int(min(self.size, max(1, FETCH_BUDGET_BYTES // max(per_sample, 1))))
        if size < self.size:
            log.info("%s batches of %d sample(s) instead of %d: the tensors read from each sample take %.0f MB",
                     what, size, self.size, per_sample / 1e6)
            return Batches(size)
        return self

    def head(self, data: Dataset) -> dict[str, np.ndarray]:
        """The first batch of `data` (padded to the model's size where it takes only that)."""
        batch = data.head(self.size)
        n = len(next(iter(batch.values())))
        return pad(batch, self.size) if self.fixed and n < self.size else batch

    def _try(self, sess, fetch, batch) -> list | None:
        """The outputs of a short batch after full ones, or None when the model refuses it: a batch size fixed
        inside the model, which every later short batch is then padded to."""
        try:
            return sess.run(fetch, batch)
        except Exception:  # noqa: BLE001 - onnxruntime's error types; a padded batch is what runs next
            log.info("the model refuses a short batch after full ones of %d (its batch size is fixed inside it): "
                     "short batches are padded", self.size)
            self.fixed = True
            return None

    def one(self, sess, fetch, batch, what: str) -> list:
        """sess.run on one feed, with a one-line DataError naming the batch when onnxruntime refuses it."""
        try:
            return sess.run(fetch, batch)
        except Exception as exc:  # onnxruntime's own error types (InvalidArgument, RuntimeException, …)
            n = len(next(iter(batch.values())))
            raise DataError(f"onnxruntime cannot run the model on a batch of {n} {what} sample(s) ({runtime_reason(exc)}): "
                            "if the model takes one batch size only, set eval.batch_size, eval.latency_batch_size and "
                            "quantization.calibration_batch_size to it, or export it with a dynamic batch") from exc


def pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The batch with copies of its last sample up to `size` samples."""
    return {k: np.concatenate([v, np.repeat(v[-1:], size - len(v), axis=0)]) for k, v in batch.items()}


def declared_batch(inputs) -> int | None:
    """The batch size every input of the model declares as a fixed number (None: free, or not one number)."""
    firsts = {i.shape[0] if i.shape else None for i in inputs}
    batch = firsts.pop() if len(firsts) == 1 else None
    return batch if isinstance(batch, int) and batch > 0 else None
