"""Quantization: plans, the QDQ build through onnxruntime, float-layer isolation, the CPU's weight range."""
