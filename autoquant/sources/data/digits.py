"""scikit-learn's digits (8×8 grey images, 10 classes): the embedded default, shipped with scikit-learn."""

from __future__ import annotations

import numpy as np

from ...data import SINGLE_INPUT_KEY, Dataset
from . import DATA_SOURCES, SourceContext


@DATA_SOURCES.register("digits")
def load(cfg, ctx: SourceContext) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return Dataset({SINGLE_INPUT_KEY: (d.images / 16.0).astype(np.float32)[:, None]}, d.target.astype(np.int64))
