"""Quantization-aware fine-tuning of a chosen plan, without labels: the model's ONNX graph run by PyTorch
(graph.py) with the plan's fake quantizers on the tensors the QDQ model quantizes (mirror.py), its weights trained
to give the FP32 model's outputs on the calibration data (train.py), and the fine-tuned FP32 weights written
beside the record (weights.py) so that the export and `apply` build the INT8 model from them the way every other
model is built. Orchestrated by jobs/finetune.py. This package imports torch only in the modules that use it."""
