"""Model sources, one module per kind: each registers `resolve(exp, splits) -> Path` (the FP32 ONNX file)
under the model section's key that selects it (`builtin`, `onnx`, `torch`)."""

from ..registry import Registry

MODEL_SOURCES = Registry("model source", __name__)
