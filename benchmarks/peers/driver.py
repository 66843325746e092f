"""Running a peer (benchmarks/peers/run_peer.py) from autoquant's side: the bed's preprocessed model and its data
split are written where the peer's virtual environment can read them, the peer runs as a subprocess, and its model
comes back to be measured by autoquant's own Meter, so every tool is scored and timed the same way."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx

from autoquant.quantize.weight_range import uint8_kernels_saturate
from autoquant.workspace import Workspace

RUN_PEER = Path(__file__).resolve().parent / "run_peer.py"
PEER_NAMES = {"inc": "INC autotune (QDQ)", "nncf": "NNCF quantize_with_accuracy_control"}


def run_peer(peer: str, python: str, ws: Workspace, max_drop: float, work: Path,
             timeout: float | None = None) -> tuple[onnx.ModelProto | None, dict]:
    """The peer's model for `ws`'s model and split at `max_drop` (None when it found none or did not finish within
    `timeout` seconds) and what it says of its run (seconds, notes, or why it failed)."""
    work.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx.load(str(ws.prepared.preprocessed)), str(work / "model.onnx"))
    calib, ev = ws.splits.calibration, ws.splits.eval
    arrays = {f"calib_{n}": calib.column(n) for n in calib.inputs} | {f"eval_{n}": ev.column(n) for n in ev.inputs}
    if ws.exp.eval.metric == "top1":
        arrays["eval_labels"] = ev.y
    arrays["eval_reference"] = ws.reference.outputs
    np.savez(work / "data.npz", **arrays, metric=ws.exp.eval.metric, fp32_accuracy=ws.reference.accuracy,
             max_drop=max_drop, reduce_range=uint8_kernels_saturate())
    (work / "peer.onnx").unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, str(RUN_PEER), peer, str(work)], capture_output=True, text=True, check=False,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, {"failed": f"stopped after {timeout:.0f} s (the benchmark's cap per peer run)", "wall_seconds": timeout}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (work / "peer.onnx").is_file():
        info = json.loads((work / "peer.json").read_text()) if proc.returncode == 0 and (work / "peer.json").is_file() else {}
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return None, {**info, "failed": info.get("notes") or " | ".join(tail), "wall_seconds": wall}
    return onnx.load(str(work / "peer.onnx")), {**json.loads((work / "peer.json").read_text()), "wall_seconds": wall}
