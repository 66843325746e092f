"""Datasets: one array per model input (by name, batch on axis 0) and optional labels of any shape, with
fixed disjoint splits. Sources (autoquant/sources/data/) produce them; the engine only reads them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import DataError

SINGLE_INPUT_KEY = "x"  # what a source names the input of a single-input model when it cannot know its name


@dataclass(frozen=True)
class Dataset:
    inputs: dict[str, np.ndarray]
    y: np.ndarray | None = None  # labels: any shape and dtype with one row per sample, or none

    def __post_init__(self):
        if not self.inputs:
            raise DataError("the data set has no input arrays: give one array per model input")
        lengths = {k: len(v) for k, v in self.inputs.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"the input arrays hold different numbers of samples ({lengths}): give one row per "
                            "sample in each")  # fmt: skip
        if len(self) == 0:
            raise DataError("the data set is empty: give at least one sample (check the split sizes)")
        if self.y is not None and len(self.y) != len(self):
            raise DataError(f"{len(self)} inputs but {len(self.y)} labels: the label array must have one per input")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def x(self) -> np.ndarray:
        """The one input array of a single-input data set (built-in models train on it)."""
        if len(self.inputs) != 1:
            raise DataError(f"this data set has {len(self.inputs)} inputs ({', '.join(self.inputs)}), not one")
        return next(iter(self.inputs.values()))

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset({k: v[idx] for k, v in self.inputs.items()}, None if self.y is None else self.y[idx])

    def head(self, n: int) -> dict[str, np.ndarray]:
        return {k: v[:n] for k, v in self.inputs.items()}

    def sha256(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.inputs):
            v = self.inputs[name]
            h.update(f"{name}:{v.shape}:{v.dtype}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        if self.y is not None:
            h.update(f"y:{self.y.shape}:{self.y.dtype}".encode())
            h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.inputs.items()}

    def renamed(self, names: dict[str, str]) -> Dataset:
        return Dataset({names.get(k, k): v for k, v in self.inputs.items()}, self.y)


@dataclass(frozen=True)
class Splits:
    """`train` is only used by built-in models that are trained here; calibration and eval are disjoint."""

    calibration: Dataset
    eval: Dataset
    train: Dataset | None = None


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
