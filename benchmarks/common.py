"""Helpers shared by the benchmark scripts: onnxruntime's quantize_static baseline, machine facts, output."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import onnx

from autoquant.versions import versions

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), **versions()}


def data_reader(data, input_name: str, batch: int):
    """onnxruntime's CalibrationDataReader over a Dataset, in batches of `batch`."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({input_name: xb} for xb in data.batches(batch))

        def get_next(self):
            return next(self.it, None)

    return Reader()


def ort_quantize_static(ws, *, per_channel: bool, method: str = "MinMax") -> onnx.ModelProto:
    """What a user gets today: quant_pre_process'd model → quantize_static (QDQ) with its defaults."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    calib = ws.splits.calibration
    batch = 25 if len(calib) % 25 == 0 else 1  # its histogram calibrators reject a ragged last batch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_static(str(ws.prepared.preprocessed), str(out), data_reader(calib, ws.prepared.inputs[0].name, batch), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, calibrate_method=getattr(CalibrationMethod, method))  # fmt: skip
        return onnx.load(str(out))


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path
