"""A Python source: `data.loader: "file.py:function"` (relative to the experiment file) or
"package.module:function", called with no arguments, returning an iterable of batches. A batch is a
mapping of input name to array, or a pair (that mapping — or one array for a single-input model —,
labels). The batches are concatenated once per run."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...data import SINGLE_INPUT_KEY, Dataset
from ...errors import ConfigError, DataError, first_line
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
                        "(inputs, labels)")  # fmt: skip
    return inputs, None if labels is None else np.asarray(labels)


@DATA_SOURCES.register("python", requires=("loader",))
def load(cfg, ctx: SourceContext) -> Dataset:
    if not cfg.loader:
        raise ConfigError("data.loader is required for data.source python: 'file.py:function' returning batches")
    fn = load_callable(cfg.loader, ctx.base, "data.loader")
    parts, labels = [], []
    try:
        for i, batch in enumerate(fn()):
            inputs, y = _split_batch(batch, i)
            if parts and inputs.keys() != parts[0].keys():
                raise DataError(f"data.loader batch {i} has inputs {sorted(inputs)}, batch 0 had {sorted(parts[0])}")
            parts.append(inputs)
            labels.append(y)
    except (DataError, ConfigError):
        raise
    except Exception as exc:  # the user's loader: whatever it raises is theirs to fix, in one line
        raise DataError(f"data.loader '{cfg.loader}' failed ({exc.__class__.__name__}: {first_line(exc, 120)})") from exc
    if not parts:
        raise DataError(f"data.loader '{cfg.loader}' yielded no batch")
    if any(y is None for y in labels) and not all(y is None for y in labels):
        raise DataError(f"data.loader '{cfg.loader}' gave labels with some batches and not others")
    try:
        inputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        y = None if labels[0] is None else np.concatenate(labels)
    except ValueError as exc:
        raise DataError(f"data.loader '{cfg.loader}' batches do not stack ({first_line(exc)}): give every batch "
                        "the same non-batch shape") from exc  # fmt: skip
    return Dataset(inputs, y)
