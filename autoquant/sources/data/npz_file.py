"""A user's .npz: one array per model input, named after the input (a single-input model may keep
`data.x_key`, or hold one array under any name), and labels under `data.y_key` of any shape and dtype — or
none. Other arrays (file names, class names, a metadata string) are not read: an info line names them."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from ...data import Dataset
from ...errors import ConfigError, DataError, first_line
from . import DATA_SOURCES, SourceContext

log = logging.getLogger(__name__)
_UNREADABLE = (zipfile.BadZipFile, ValueError, OSError, EOFError)


def _open(path: Path | None):
    if path is None:
        raise ConfigError("data.path is required for this data.source: point it at the file")
    if not path.is_file():
        raise DataError(f"data file {path} not found: set data.path in the experiment file")
    try:
        return np.load(path, allow_pickle=False)
    except _UNREADABLE as exc:
        raise DataError(f"{path} is not a readable .npz file ({first_line(exc)})") from exc


def array_names(path: Path | None) -> list[str]:
    with _open(path) as f:
        return sorted(f.files)


def read_arrays(path: Path | None, keys: list[str]) -> dict[str, np.ndarray]:
    """The named arrays of an .npz, and nothing else of it (another array may be an object array or huge)."""
    with _open(path) as f:
        return {k: _array(f, k, path) for k in keys}


def _array(f, key: str, path: Path) -> np.ndarray:
    try:
        value = f[key]
    except ValueError as exc:  # an object array: numpy refuses to unpickle it, rightly
        raise DataError(f"{path}: array '{key}' holds Python objects ({first_line(exc, 80)}): save it as a numeric "
                        "array") from exc
    except _UNREADABLE as exc:
        raise DataError(f"{path}: array '{key}' cannot be read ({first_line(exc)})") from exc
    if value.ndim == 0:
        raise DataError(f"{path}: array '{key}' is a single value, not one row per sample")
    return value


def _input_keys(path: Path, names: list[str], inputs: tuple[str, ...] | None, x_key: str) -> list[str]:
    """Which arrays are the model's inputs: one named after each input; for a single-input model (or a built-in
    one, whose input is not known yet) `x_key`, or the file's only array."""
    if inputs is not None and len(inputs) > 1:
        missing = [n for n in inputs if n not in names]
        if missing:
            raise DataError(f"{path} has no array named after the model input '{missing[0]}' (it has "
                            f"{', '.join(names) or 'none'}): name one array after each model input")
        return list(inputs)
    if inputs and inputs[0] in names:
        return [inputs[0]]
    if x_key in names:
        return [x_key]
    if len(names) == 1:
        return names
    wanted = f"'{inputs[0]}' or '{x_key}'" if inputs else f"'{x_key}'"
    raise DataError(f"{path} has arrays {', '.join(names) or 'none'} besides the labels but none named {wanted}: "
                    "name the model input's array (or set data.x_key)")


@DATA_SOURCES.register("npz", requires=("path",))
def load(cfg, ctx: SourceContext) -> Dataset:
    with _open(cfg.path) as f:
        labels_key = cfg.y_key if cfg.y_key and cfg.y_key in f.files else None
        others = [k for k in f.files if k != labels_key]
        keys = _input_keys(cfg.path, others, ctx.inputs, cfg.x_key)
        ignored = [k for k in others if k not in keys]
        if ignored:
            labels = f"nor the labels '{cfg.y_key}'" if cfg.y_key else "and data.y_key is null: no labels are read"
            log.info("%s: not reading %s (not a model input %s)", cfg.path.name, ", ".join(ignored), labels)
        arrays = {k: _array(f, k, cfg.path) for k in keys}
        labels = _array(f, labels_key, cfg.path) if labels_key else None
    return Dataset(arrays, labels)
