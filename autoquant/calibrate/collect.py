"""The one calibration pass: run the FP32 model once over the calibration data, updating the statistics
of every float activation tensor at once (all range algorithms read the same statistics)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ..data import Dataset
from ..errors import DataError
from ..graph.ingest import ModelInput
from .stats import TensorStats


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Idle onnxruntime threads spin for a while after each run. Several live sessions (a trial next to
    # FP32, or the models of a benchmark timed interleaved) then steal each other's cores: measured on
    # 11 sessions, FP32 went from 3.8 to 15.4 ms per batch and identical INT8 graphs spread 0.66-0.85.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def check_input(x: np.ndarray, model_input: ModelInput, what: str) -> None:
    """Raise a DataError naming the mismatch if `x` cannot be fed to the model."""
    want = model_input.shape[1:]
    if x.ndim != len(model_input.shape) or any(
        isinstance(w, int) and w > 0 and w != g for w, g in zip(want, x.shape[1:])
    ):
        raise DataError(
            f"{what} samples have shape {tuple(x.shape[1:])} but the model input '{model_input.name}' "
            f"expects {tuple(want)}: fix the data layout or point the experiment at the right model"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what} data is {x.dtype}, the model expects float32: convert it before saving")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise DataError(f"{what} data has NaN or Inf in {bad} sample(s): clean or drop them")


def _augment(model: onnx.ModelProto, tensors: tuple[str, ...]) -> onnx.ModelProto:
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    have = {o.name for o in aug.graph.output}
    for t in tensors:
        if t not in have:
            aug.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    return aug


def collect_stats(
    model: onnx.ModelProto,
    model_input: ModelInput,
    tensors: tuple[str, ...],
    data: Dataset,
    *,
    batch_size: int,
    threads: int,
) -> dict[str, TensorStats]:
    check_input(data.x, model_input, "calibration")
    sess = ort.InferenceSession(
        _augment(model, tuple(t for t in tensors if t != model_input.name)).SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
    )
    stats = {t: TensorStats() for t in tensors}
    fetched = [t for t in tensors if t != model_input.name]  # the graph input is read from the batch itself
    for xb in data.batches(batch_size):
        xb = xb.astype(np.float32, copy=False)
        if model_input.name in stats:
            stats[model_input.name].update(xb)
        # One batch at a time: only the current batch's activations are ever held in memory.
        for name, value in zip(fetched, sess.run(fetched, {model_input.name: xb})):
            stats[name].update(value)
    return stats
