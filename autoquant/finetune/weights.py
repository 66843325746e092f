"""Fine-tuned weights as a file: the FP32 values of the initializers fine-tuning changed, by name, next to the
record of the model built from them (`apply` rebuilds from the source model with them substituted)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import PlanError

FILE = "finetuned.npz"


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `weights` hold those values (same names, shapes, dtype)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {i.name: i for i in out.graph.initializer}
    for name, value in weights.items():
        old = present.get(name)
        if old is None or tuple(old.dims) != value.shape:
            raise PlanError(f"fine-tuned weight '{name}' does not fit the model (missing or another shape): the "
                            "weights file belongs to another model")
        if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
            bad = "is not floating-point" if not np.issubdtype(value.dtype, np.floating) else \
                f"holds {int(np.size(value) - np.isfinite(value).sum())} NaN or Inf value(s)"
            raise PlanError(f"fine-tuned weight '{name}' {bad}: a model built from it would compute garbage; "
                            "fine-tune again (a lower finetune.lr if the loss diverged)")
        old.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return out


def to_bytes(weights: dict[str, np.ndarray]) -> bytes:
    """npz of the weights in name order; names live in their own array (initializer names are not file names)."""
    names = sorted(weights)
    buffer = io.BytesIO()
    np.savez(buffer, names=np.array(names), **{f"w{i}": weights[n].astype(np.float32) for i, n in enumerate(names)})
    return buffer.getvalue()


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def load(path: Path, expected_sha256: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise PlanError(f"{path} not found: a fine-tuned record is rebuilt from the weights file written beside it")
    blob = path.read_bytes()
    if sha256(blob) != expected_sha256:
        raise PlanError(f"{path} is not the weights file the record was written with (sha256 differs)")
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {str(n): z[f"w{i}"] for i, n in enumerate(z["names"])}
