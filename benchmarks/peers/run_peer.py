"""What a user would run instead of autoquant, on the same model, data split and constraint: Intel Neural
Compressor for ONNX (`onnx-neural-compressor`, accuracy-driven autotune of static QDQ quantization) or
NNCF (`quantize_with_accuracy_control`). Run by benchmarks/search_at_scale.py with the Python of a
separate virtual environment (the peers pin other numpy/onnx versions than autoquant's), so it only
imports numpy, onnx and onnxruntime besides the peer itself.

    python run_peer.py {inc,nncf} WORK_DIR

WORK_DIR holds model.onnx, data.npz (calib_* / eval_* arrays per input, eval_labels or eval_reference,
fp32_accuracy, max_drop, metric) and receives peer.onnx and peer.json (seconds, notes).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def load(work: Path):
    d = np.load(work / "data.npz")
    names = [k[len("calib_") :] for k in d.files if k.startswith("calib_")]
    calib = {n: d[f"calib_{n}"] for n in names}
    evals = {n: d[f"eval_{n}"] for n in names}
    return d, names, calib, evals


def batches(arrays: dict, size: int):
    n = len(next(iter(arrays.values())))
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in arrays.items()}


def per_sample(d, out: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """The experiment's metric per eval sample, as a fraction: top-1 hit against the labels, agreement with FP32's
    top-1, or cosine similarity to FP32's output."""
    metric = str(d["metric"])
    if metric == "cosine":
        ref = d["eval_reference"] if idx is None else d["eval_reference"][idx]
        out, ref = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
        return (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    target = d["eval_labels"] if metric == "top1" else d["eval_reference"].argmax(axis=-1)
    return (out.argmax(axis=-1) == (target if idx is None else target[idx])).astype(float)


def outputs(model, arrays: dict) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, b)[0] for b in batches(arrays, 50)])


def scorer(d, evals: dict):
    """The experiment's metric in percent, of a model file."""

    def score(model_path: str) -> float:
        return float(per_sample(d, outputs(model_path, evals)).mean() * 100.0)

    return score


def run_inc(work: Path) -> dict:
    from onnx_neural_compressor.data_reader import CalibrationDataReader
    from onnx_neural_compressor.quantization import config, tuning
    from onnxruntime.quantization import QuantFormat

    d, _, calib, evals = load(work)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self):
            return next(self.it, None)

        def rewind(self):
            self.it = batches(calib, 1)

    score = scorer(d, evals)
    fp32 = float(d["fp32_accuracy"])
    configs = config.StaticQuantConfig.get_config_set_for_tuning(quant_format=QuantFormat.QDQ,
                                                                 reduce_range=bool(d["reduce_range"]))
    tune = tuning.TuningConfig(config_set=configs, tolerable_loss=float(d["max_drop"]) / fp32, max_trials=20)
    model = tuning.autotune(str(work / "model.onnx"), tune, eval_fn=score, calibration_data_reader=Reader())
    if model is None:
        return {"notes": "autotune found no model within the tolerable loss"}
    import onnx

    onnx.save(model, str(work / "peer.onnx"))
    return {"notes": "INC autotune, StaticQuantConfig tuning set, QDQ"}


def run_nncf(work: Path) -> dict:
    import nncf
    import onnx

    d, names, calib, evals = load(work)
    model = onnx.load(str(work / "model.onnx"))
    calibration = nncf.Dataset(list(batches(calib, 1)))
    # One item per eval sample, as NNCF's documentation sets it up: its ranking draws a subset of items (300)
    # and, in metric mode, scores items one at a time through validate — which must therefore score only
    # the items it is given (scoring the whole eval set per item made one NNCF run take over 18 minutes).
    n = len(next(iter(evals.values())))
    validation = nncf.Dataset(list(range(n)), lambda i: {k: evals[k][i : i + 1] for k in names})

    def validate(m: onnx.ModelProto, items) -> tuple[float, list[float]]:
        idx = np.fromiter(items, dtype=np.int64)
        values = per_sample(d, outputs(m.SerializeToString(), {k: evals[k][idx] for k in names}), idx)
        return float(values.mean()), values.tolist()

    quantized = nncf.quantize_with_accuracy_control(model, calibration, validation, validate,
                                                     max_drop=float(d["max_drop"]) / 100.0,
                                                     drop_type=nncf.DropType.ABSOLUTE)
    onnx.save(quantized, str(work / "peer.onnx"))
    return {"notes": "NNCF quantize_with_accuracy_control, ONNX backend, absolute drop, one validation item per sample"}


def main() -> None:
    peer, work = sys.argv[1], Path(sys.argv[2])
    t0 = time.perf_counter()
    info = {"inc": run_inc, "nncf": run_nncf}[peer](work)
    info["seconds"] = time.perf_counter() - t0
    (work / "peer.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
