"""A user's FP32 ONNX file, used as it is (pre-processing makes its own copy in the cache)."""

from __future__ import annotations

from pathlib import Path

from . import MODEL_SOURCES


@MODEL_SOURCES.register("onnx")
def resolve(exp, splits) -> Path:
    return exp.model.onnx
