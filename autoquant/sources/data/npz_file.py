"""A user's .npz: one array per model input, named after the input (a single-input model may keep
`data.x_key`), and labels under `data.y_key` of any shape and dtype — or none."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ...data import Dataset
from ...errors import ConfigError, DataError
from . import DATA_SOURCES


def read_npz(path: Path) -> dict[str, np.ndarray]:
    if path is None:
        raise ConfigError("data.path is required for this data.source: point it at the file")
    if not path.is_file():
        raise DataError(f"data file {path} not found: set data.path in the experiment file")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc


@DATA_SOURCES.register("npz", requires=("path",))
def load(cfg, base, cache) -> Dataset:
    arrays = read_npz(cfg.path)
    labels = arrays.pop(cfg.y_key, None) if cfg.y_key else None
    if not arrays:
        raise DataError(f"{cfg.path} has no input arrays besides the labels '{cfg.y_key}'")
    # A single-input file is bound to the model's input whatever its key; with several arrays, x_key
    # picks one only if the others are not inputs — the Workspace matches them to the model by name.
    return Dataset(arrays, labels)
