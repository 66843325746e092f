"""Datasets: one array per model input (by name, batch on axis 0) and optional labels of any shape, with
fixed disjoint splits. Sources (autoquant/sources/data/) produce them; the engine only reads them."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import DataError

SINGLE_INPUT_KEY = "x"  # what a source names the input of a single-input model when it cannot know its name


@dataclass(frozen=True)
class Dataset:
    """Arrays may be memory-mapped (an image folder's cache): a subset keeps the rows it selects, not a
    copy, and batches read only their rows — a split never has to fit in memory at once."""

    inputs: dict[str, np.ndarray]
    y: np.ndarray | None = None  # labels: any shape and dtype with one row per sample, or none
    rows: np.ndarray | None = None  # the selected rows of `inputs` (all when None); `y` is already selected

    def __post_init__(self):
        if not self.inputs:
            raise DataError("the data set has no input arrays: give one array per model input")
        lengths = {k: len(v) for k, v in self.inputs.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"the input arrays hold different numbers of samples ({lengths}): give one row per "
                            "sample in each")
        if len(self) == 0:
            raise DataError("the data set is empty: give at least one sample (check the split sizes)")
        if self.y is not None and len(self.y) != len(self):
            raise DataError(f"{len(self)} inputs but {len(self.y)} labels: the label array must have one per input")

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(next(iter(self.inputs.values())))

    def _take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self.rows is None:
            return {k: v[start:stop] for k, v in self.inputs.items()}
        sel = self.rows[start:stop]
        return {k: v[sel] for k, v in self.inputs.items()}

    def column(self, name: str) -> np.ndarray:
        """One input's selected rows, in memory."""
        return self.inputs[name] if self.rows is None else self.inputs[name][self.rows]

    @property
    def x(self) -> np.ndarray:
        """The one input array of a single-input data set (built-in models train on it)."""
        if len(self.inputs) != 1:
            raise DataError(f"this data set has {len(self.inputs)} inputs ({', '.join(self.inputs)}), not one")
        return self.column(next(iter(self.inputs)))

    def subset(self, idx: np.ndarray) -> Dataset:
        rows = idx if self.rows is None else self.rows[idx]
        return Dataset(self.inputs, None if self.y is None else self.y[idx], np.asarray(rows))

    def head(self, n: int) -> dict[str, np.ndarray]:
        return self._take(0, n)

    def sha256(self) -> str:
        """Content hash (cache keys, study fingerprints); computed once: a study asks for it several times."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.inputs):
            v = self.inputs[name]
            h.update(f"{name}:{(len(self), *v.shape[1:])}:{v.dtype}".encode())
        for batch in self.batches(256):
            for name in sorted(batch):
                h.update(np.ascontiguousarray(batch[name]).tobytes())
        if self.y is not None:
            h.update(f"y:{self.y.shape}:{self.y.dtype}".encode())
            h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield self._take(start, start + batch_size)

    def with_inputs(self, inputs: dict[str, np.ndarray]) -> Dataset:
        """The same rows of other arrays (renamed or converted inputs)."""
        return Dataset(inputs, self.y, self.rows)

    def sample_digests(self) -> list[bytes]:
        """One hash per sample, of its input arrays: which samples of two data sets are the same."""
        out = []
        for batch in self.batches(256):
            for i in range(len(next(iter(batch.values())))):
                h = hashlib.sha256()
                for name in sorted(batch):
                    h.update(np.ascontiguousarray(batch[name][i]).tobytes())
                out.append(h.digest())
        return out


def concat(parts: list[Dataset]) -> Dataset:
    """The samples of `parts` in order, without labels: rows of one set of arrays stay rows of it; others are read
    into memory."""
    if all(p.inputs is parts[0].inputs for p in parts):
        rows = np.concatenate([p.rows if p.rows is not None else np.arange(len(p)) for p in parts])
        return Dataset(parts[0].inputs, None, rows)
    names = list(parts[0].inputs)
    return Dataset({n: np.concatenate([p.column(n) for p in parts]) for n in names})


@dataclass(frozen=True)
class Splits:
    """`train` is only used by built-in models that are trained here; calibration, eval and confirm are disjoint, and
    `confirm` is read only to confirm an export's drop on samples no trial saw (None: no confirmation)."""

    calibration: Dataset
    eval: Dataset
    train: Dataset | None = None
    confirm: Dataset | None = None
    rest: Dataset | None = None  # the samples no split takes (fine-tuning may learn from them: never scored)


def split(data: Dataset, *, calibration: int, eval: int, train: int = 0, seed: int = 0,
          calibration_data: Dataset | None = None, confirm: int = 0, confirm_exact: bool = False) -> Splits:
    """Fixed, disjoint split from one seeded permutation: [train | calibration | eval | confirm] — or, when the user
    has separate calibration data, [train | eval | confirm] of `data` and the calibration samples from that. The
    first three are the same whatever `confirm` is (a study's eval samples do not move when confirmation is turned
    on). `confirm` samples are asked for; unless `confirm_exact`, as many of them as the data has left are taken."""
    if calibration <= 0:
        raise DataError("the calibration set is empty: set data.calibration_size to at least 1")
    if eval <= 0:
        raise DataError("the eval set is empty: set data.eval_size to at least 1")
    own_calibration = 0 if calibration_data is not None else calibration
    need = train + own_calibration + eval
    if need > len(data):
        raise DataError(
            f"the splits need {need} samples (train {train} + calibration {own_calibration} + eval {eval}) "
            f"but the data has {len(data)}: lower data.calibration_size or data.eval_size"
        )
    if confirm_exact and need + confirm > len(data):
        raise DataError(f"data.confirm_size {confirm} needs {need + confirm} samples with the other splits but the data "
                        f"has {len(data)}: lower data.confirm_size, or leave it out to take what is left")
    if calibration_data is not None and calibration > len(calibration_data):
        raise DataError(f"data.calibration_size is {calibration} but the calibration data has {len(calibration_data)} "
                        "samples: lower data.calibration_size")
    perm = np.random.default_rng(seed).permutation(len(data))
    if calibration_data is None:
        calib = data.subset(np.sort(perm[train : train + calibration]))
    else:
        calib = calibration_data.subset(np.sort(np.random.default_rng(seed).permutation(len(calibration_data))[:calibration]))
    confirm = min(confirm, len(data) - need)
    return Splits(
        calibration=calib,
        # In the permutation's order, not the source's: any run of whole batches from the start is then a
        # simple random sample, which the early-stop screen scores first and a passing trial keeps.
        eval=data.subset(perm[train + own_calibration : need]),
        train=data.subset(perm[:train]) if train else None,
        confirm=data.subset(perm[need : need + confirm]) if confirm > 0 else None,
        rest=data.subset(np.sort(perm[need + confirm :])) if need + confirm < len(data) else None,
    )
