"""Datasets as plain arrays: loaders for digits (shipped by scikit-learn), CIFAR-10 .npz and user .npz files.

A Dataset is NCHW float32 inputs plus int64 labels; every split is fixed and disjoint.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

# The shared CIFAR ResNets were trained with ImageNet statistics (shared/data/PROVENANCE.md).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        if len(self.x) == 0:
            raise DataError("the data set is empty: give at least one sample (check the split sizes)")
        if self.y is not None and len(self.y) != len(self.x):
            raise DataError(f"{len(self.x)} inputs but {len(self.y)} labels: the label array must have one per input")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.x[idx], None if self.y is None else self.y[idx])

    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(str(self.x.shape).encode() + str(self.x.dtype).encode())
        h.update(np.ascontiguousarray(self.x).tobytes())
        if self.y is not None:
            h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int):
        for start in range(0, len(self.x), batch_size):
            yield self.x[start : start + batch_size]


@dataclass(frozen=True)
class Splits:
    """`train` is only used by built-in models that are trained here; calibration and eval are disjoint."""

    calibration: Dataset
    eval: Dataset
    train: Dataset | None = None


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return Dataset((d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64))


def load_cifar10(path: Path) -> Dataset:
    """The CIFAR-10 test file of shared/data: uint8 NHWC images → normalized float32 NCHW."""
    raw = _load_npz(path, "images", "labels")
    images, labels = raw
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: 'images' has shape {images.shape}, expected (N, 32, 32, 3) uint8 RGB")
    x = (images.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return Dataset(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), labels.astype(np.int64))


def load_npz(path: Path, x_key: str = "x", y_key: str = "y") -> Dataset:
    """A user's own data: an .npz with float inputs (already preprocessed, model layout) and int labels."""
    x, y = _load_npz(path, x_key, y_key)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{path}: '{x_key}' is {x.dtype}; save the inputs as float32, already preprocessed the way the model expects"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: '{y_key}' must be a 1-D integer label array, got {y.dtype} {y.shape}")
    return Dataset(x.astype(np.float32, copy=False), y.astype(np.int64))


def _load_npz(path: Path, *keys: str) -> tuple[np.ndarray, ...]:
    if not path.is_file():
        raise DataError(f"data file {path} not found: set data.path in the experiment file")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(f"{path} has arrays {f.files}, not {missing}: set data.x_key / data.y_key")
            return tuple(f[k] for k in keys)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc


def split(data: Dataset, *, calibration: int, eval: int, train: int = 0, seed: int = 0) -> Splits:
    """Fixed, disjoint split from one seeded permutation: [train | calibration | eval]."""
    need = train + calibration + eval
    if calibration <= 0:
        raise DataError("the calibration set is empty: set data.calibration_size to at least 1")
    if eval <= 0:
        raise DataError("the eval set is empty: set data.eval_size to at least 1")
    if need > len(data):
        raise DataError(
            f"the splits need {need} samples (train {train} + calibration {calibration} + eval {eval}) "
            f"but the data has {len(data)}: lower data.calibration_size or data.eval_size"
        )
    perm = np.random.default_rng(seed).permutation(len(data))
    return Splits(
        calibration=data.subset(np.sort(perm[train : train + calibration])),
        eval=data.subset(np.sort(perm[train + calibration : need])),
        train=data.subset(perm[:train]) if train else None,
    )
