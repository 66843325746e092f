"""Metrics: higher is better, computed from the model's first output and the labels."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

from ..errors import ConfigError

Metric = Callable[[np.ndarray, np.ndarray], float]


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((outputs.reshape(len(outputs), -1).argmax(axis=1) == labels).mean() * 100.0)


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
    return fn
