"""Evaluation: running a model on the eval data, metrics, latency, the cost model, what onnxruntime executes."""
