"""The trained built-in models, by name: their recipes, what a trained model is a function of (its tag), and the
exports shipped for the embedded defaults (shipped/: the quickstart's and the MobileNet experiment's), so those
give the same model, hash for hash, on every machine and start without training. Imports no torch: the recipes
are here, the training code beside it imports torch when a model is trained."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import numpy as np

# Change a recipe whenever its architecture or training changes: a model trained by another recipe is never reused.
RECIPES = {"digits_cnn": "digits-cnn-v3:24px:epochs=10:lr=0.01:outliers=2x100:one-thread",
           "cifar10_mobilenet": "mobilenet-cifar-v2:epochs=12:lr=0.004:crop-flip:one-thread"}
TRAINERS = {"digits_cnn": "digits_cnn:train_digits_cnn", "cifar10_mobilenet": "mobilenet_cifar:train_mobilenet_cifar"}
SHIPPED = Path(__file__).with_name("shipped")


def trained_tag(name: str, data_sha256: str, seed: int) -> str:
    """What a trained built-in model is a function of: its recipe, its training data and seed."""
    recipe = hashlib.sha256(RECIPES[name].encode()).hexdigest()[:8]
    return f"{name}-{recipe}-{data_sha256[:12]}-seed{seed}"


def shipped_model(tag: str) -> Path | None:
    """The shipped export of the model `tag` names, if it is one of the embedded defaults."""
    path = SHIPPED / f"{tag}.onnx"
    return path if path.is_file() else None


def train(name: str, x: np.ndarray, y: np.ndarray, cache_dir: Path, seed: int, data_sha256: str):
    """The trained torch module (its weights cached under `cache_dir`)."""
    module, function = TRAINERS[name].split(":")
    trainer = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    return trainer(x, y, cache_dir, seed, f"{RECIPES[name]}:seed={seed}:data={data_sha256}")
