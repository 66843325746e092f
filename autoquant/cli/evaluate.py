"""`autoquant evaluate MODEL.onnx EXP.yaml`: accuracy and paired latency of any ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

from .common import workspace

NAME = "evaluate"
HELP = "accuracy and latency of any ONNX model on the experiment's eval data"


def add_arguments(p) -> None:
    p.add_argument("model", type=Path)
    p.add_argument("experiment", type=Path)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..engine import evaluate

    ws = workspace(args.experiment)
    r = evaluate(args.model, ws)
    samples = len(ws.splits.eval)
    if args.json:
        print(json.dumps({"accuracy": r.accuracy, "accuracy_drop": r.accuracy_drop, "latency_ms": r.latency_ms,
                          "latency_ratio": r.latency_ratio, "samples": samples}))
    else:
        print(f"accuracy {r.accuracy:.2f} % on {samples} eval samples (drop {r.accuracy_drop:+.2f} pt vs FP32)   "
              f"latency {r.latency_ms:.2f} ms per batch ({r.latency_ratio:.2f}x FP32, timed interleaved)")
    return 0
