"""Metrics: higher is better, computed from the model's first output and the labels."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

from ..errors import ConfigError, DataError

Metric = Callable[[np.ndarray, np.ndarray], float]


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    classes = int(np.prod(outputs.shape[1:]))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"top1 needs one integer class id per sample; the labels are {labels.dtype} of shape "
                        f"{labels.shape}: use a custom eval.metric for other labels")  # fmt: skip
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"labels run from {labels.min()} to {labels.max()} but the model has {classes} outputs per "
                        "sample: top1 needs class ids in [0, outputs); check data.y_key and the label encoding")  # fmt: skip
    return float((outputs.reshape(len(outputs), -1).argmax(axis=1) == labels).mean() * 100.0)


def _checked(spec: str, fn: Callable) -> Metric:
    def metric(outputs: np.ndarray, labels: np.ndarray) -> float:
        try:
            value = float(fn(outputs, labels))
        except Exception as exc:  # the user's function: any error is theirs to fix, said in one line
            raise DataError(f"eval.metric '{spec}' failed on the model's outputs ({exc.__class__.__name__}: "
                            f"{str(exc)[:120]}): it must take (outputs, labels) and return a number") from exc  # fmt: skip
        if not np.isfinite(value):
            raise DataError(f"eval.metric '{spec}' returned {value}: it must return a finite number")
        return value

    return metric


def resolve_metric(spec: str) -> Metric:
    """'top1' or 'package.module:function' taking (outputs, labels) and returning a float."""
    if spec == "top1":
        return top1
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"metric '{spec}' cannot be imported ({exc}): make the module importable") from exc
    if not callable(fn):
        raise ConfigError(f"metric '{spec}' is not callable")
    return _checked(spec, fn)
