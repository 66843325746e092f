"""A Python source: `data.loader: "file.py:function"` (relative to the experiment file) or
"package.module:function", called with no arguments, returning an iterable of batches. A batch is a
mapping of input name to array, or a pair (that mapping — or one array for a single-input model —,
labels). The batches are read until they hold the samples the experiment's splits need (train + calibration +
eval): a loader that yields more, or never stops (a stream, random augmentations), is not read further —
shuffle in the loader if its order matters."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...data import SINGLE_INPUT_KEY, Dataset
from ...errors import ConfigError, DataError, first_line
from ...progress import bar
from ...usercode import load_callable
from . import DATA_SOURCES, SourceContext


def _split_batch(batch, i: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    labels = None
    if isinstance(batch, tuple) and len(batch) == 2:
        batch, labels = batch
    if isinstance(batch, Mapping):
        inputs = {str(k): np.asarray(v) for k, v in batch.items()}
    elif isinstance(batch, np.ndarray):
        inputs = {SINGLE_INPUT_KEY: batch}
    else:
        raise DataError(f"data.loader batch {i} is a {type(batch).__name__}: yield a dict of input arrays, or "
                        "(inputs, labels)")
    return inputs, None if labels is None else np.asarray(labels)


@DATA_SOURCES.register("python", requires=("loader",), streams=True)
def load(cfg, ctx: SourceContext) -> Dataset:
    if not cfg.loader:
        raise ConfigError("data.loader is required for data.source python: 'file.py:function' returning batches")
    fn = load_callable(cfg.loader, ctx.base, "data.loader")
    parts, labels, have = [], [], 0
    shown = bar(ctx.need, f"reading {cfg.loader}", unit="sample")
    try:
        for i, batch in enumerate(fn()):
            inputs, y = _split_batch(batch, i)
            if parts and inputs.keys() != parts[0].keys():
                raise DataError(f"data.loader batch {i} has inputs {sorted(inputs)}, batch 0 had {sorted(parts[0])}")
            take = min(_length(inputs, y, i, cfg.loader), ctx.need - have)
            parts.append({k: v[:take] for k, v in inputs.items()})
            labels.append(None if y is None else y[:take])
            have += take
            shown.update(take)
            if have >= ctx.need:
                break
    except (DataError, ConfigError):
        raise
    except Exception as exc:  # the user's loader: whatever it raises is theirs to fix, in one line
        raise DataError(f"data.loader '{cfg.loader}' failed ({exc.__class__.__name__}: {first_line(exc, 120)})") from exc
    finally:
        shown.close()
    if not parts:
        raise DataError(f"data.loader '{cfg.loader}' yielded no batch")
    if any(y is None for y in labels) and not all(y is None for y in labels):
        raise DataError(f"data.loader '{cfg.loader}' gave labels with some batches and not others")
    try:
        inputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        y = None if labels[0] is None else np.concatenate(labels)
    except ValueError as exc:
        raise DataError(f"data.loader '{cfg.loader}' batches do not stack ({first_line(exc)}): give every batch "
                        "the same non-batch shape") from exc
    return Dataset(inputs, y)


def _length(inputs: dict[str, np.ndarray], labels: np.ndarray | None, i: int, loader: str) -> int:
    """Samples in one batch: its arrays must agree."""
    lengths = {len(v) if v.ndim else None for v in inputs.values()} | ({len(labels) if labels.ndim else None}
                                                                        if labels is not None else set())
    if len(lengths) != 1 or None in lengths:
        raise DataError(f"data.loader '{loader}' batch {i} holds arrays of different lengths or single values: give "
                        "one row per sample in each array")
    return lengths.pop()
