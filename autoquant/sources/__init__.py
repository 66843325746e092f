"""From an experiment's model and data sections to an FP32 ONNX file and fixed data splits, through the
registries of model sources (sources/models/) and data sources (sources/data/)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import Experiment
from ..data import SINGLE_INPUT_KEY, Dataset, Splits, split
from ..errors import ConfigError, DataError
from ..graph.ingest import ModelInput
from .data import DATA_SOURCES, SourceContext
from .models import MODEL_SOURCES

log = logging.getLogger(__name__)


def experiment_dir(exp: Experiment) -> Path:
    """Where relative code references (metrics, loaders, factories) are resolved from."""
    return exp.source_file.parent if exp.source_file else Path.cwd()


def model_kind(exp: Experiment) -> str:
    return next(k for k in ("builtin", "onnx", "torch") if getattr(exp.model, k) is not None)


def check(exp: Experiment) -> None:
    """Unknown source names and missing required settings are errors before any work starts."""
    for section, d in (("data", exp.data), ("data.calibration", exp.data.calibration)):
        if d is None:
            continue
        missing = [k for k in DATA_SOURCES.get(d.source).requires if getattr(d, k) is None]
        if missing:
            raise ConfigError(f"{section}.{missing[0]} is required for data.source '{d.source}'")
    MODEL_SOURCES.get(model_kind(exp))


def load_splits(exp: Experiment, inputs: tuple[str, ...] | None = None) -> Splits:
    """The experiment's splits; `inputs` are the model's input names (a source reads only those arrays), None
    for a built-in model that is trained on them before it exists."""
    d = exp.data
    base = experiment_dir(exp)
    if d.calibration and _same_data(d, d.calibration):
        raise DataError(f"data.calibration reads the same data as data ({d.path or d.loader or d.source}): its samples "
                        "would also be scored; leave data.calibration out (one source is split into disjoint "
                        "calibration and eval samples) or point it at other data")
    calibration_here = 0 if d.calibration else d.calibration_size
    others = d.train_size + calibration_here + d.eval_size
    source = DATA_SOURCES.get(d.source)
    full = source(d, SourceContext(base, exp.cache, inputs, others + d.confirm_wanted))
    calib = None
    if d.calibration:
        calib = DATA_SOURCES.get(d.calibration.source)(d.calibration, SourceContext(base, exp.cache, inputs, d.calibration_size))
    kept = {"calibration": d.calibration_size, "eval": d.eval_size, "train": d.train_size, "seed": d.seed,
            "calibration_data": calib}
    if source.streams and len(full) > others:
        # A stream is read as far as the splits need: the other splits come from its first samples whatever the
        # confirmation asks (so turning confirmation on moves no eval sample), the confirmation from those after.
        splits = split(full.subset(np.arange(others)), **kept)
        rest = np.arange(others, min(len(full), others + d.confirm_wanted))
        splits = replace(splits, confirm=full.subset(rest) if len(rest) else None)
        if d.confirm_size is not None and len(rest) < d.confirm_size:
            raise DataError(f"data.confirm_size {d.confirm_size}: {d.loader} gave {len(rest)} samples after the other "
                            "splits; lower data.confirm_size, or leave it out to take what is left")
    else:
        splits = split(full, **kept, confirm=d.confirm_wanted, confirm_exact=d.confirm_size is not None)
    got = len(splits.confirm) if splits.confirm is not None else 0
    if got < d.confirm_wanted:
        log.info("%s: %d of the %d confirmation samples asked for are left after the other splits%s", d.source, got,
                 d.confirm_wanted, "" if got else ": the export's drop is not confirmed on unseen samples")
    return splits


def _same_data(a, b) -> bool:
    return a.source == b.source and a.path == b.path and a.loader == b.loader and a.image == b.image


def model_path(exp: Experiment, splits: Callable[[], Splits]) -> Path:
    """The FP32 ONNX file the experiment quantizes (exported and cached for built-in and torch models).
    `splits` is asked for only by built-in models trained here: an ONNX model needs no data to be listed."""
    return MODEL_SOURCES.get(model_kind(exp))(exp, splits)


def bind_inputs(data: Dataset, inputs: tuple[ModelInput, ...], what: str) -> Dataset:
    """Name and type the source's arrays as the model's inputs: a single-input model takes the one array
    (or the `x` array) whatever its name; several inputs are matched by name. Conversions that lose
    nothing are made (float64 → float32, int32 ↔ int64 in range, 0/1 → bool); others are errors."""
    arrays = dict(data.inputs)
    names = [i.name for i in inputs]
    if len(names) == 1 and names[0] not in arrays:
        if len(arrays) == 1:
            arrays = {names[0]: next(iter(arrays.values()))}
        elif SINGLE_INPUT_KEY in arrays:
            arrays = {names[0]: arrays[SINGLE_INPUT_KEY]}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"the {what} data has no array for the model input '{missing[0]}' (it has "
                        f"{', '.join(sorted(arrays))}): name one array after each model input")
    return data.with_inputs({i.name: _convert(arrays[i.name], i, what) for i in inputs})


def _convert(x: np.ndarray, spec: ModelInput, what: str) -> np.ndarray:
    if x.dtype == spec.dtype:
        return x
    want = spec.dtype
    if np.issubdtype(want, np.floating) and np.issubdtype(x.dtype, np.floating):
        return x.astype(want)
    if np.issubdtype(want, np.integer) and (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        info = np.iinfo(want)
        if x.size == 0 or (x.min() >= info.min and x.max() <= info.max):
            return x.astype(want)
    if want == np.bool_ and np.issubdtype(x.dtype, np.integer) and np.isin(x, (0, 1)).all():
        return x.astype(np.bool_)
    raise DataError(f"the {what} data '{spec.name}' is {x.dtype} but the model input is {want}: save it as {want} "
                    "(already preprocessed the way the model expects)")
