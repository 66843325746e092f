"""Metrics: higher is better, computed from the scored output over the eval set, the labels (any shape, or
none) and the FP32 model's outputs on the same data (`reference`).

Built-in metrics are registered by name; a user's is `file.py:function` or `module:function`, found
relative to the experiment file (no PYTHONPATH needed), taking (outputs, labels) or
(outputs, labels, reference) and returning a number.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, first_line
from ..usercode import load_callable

Metric = Callable[[np.ndarray, "np.ndarray | None", np.ndarray], float]
BUILTIN: dict[str, Metric] = {}


def builtin(name: str):
    def register(fn: Metric) -> Metric:
        BUILTIN[name] = fn
        return fn

    return register


def _class_ids(outputs: np.ndarray, labels: np.ndarray | None, metric: str) -> None:
    if labels is None:
        raise DataError(f"{metric} needs class-id labels and the data has none: set data.y_key, or use eval.metric "
                        "agreement (top-1 agreement with the FP32 model) on unlabeled data")
    classes = int(np.prod(outputs.shape[1:]))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{metric} needs one integer class id per sample; the labels are {labels.dtype} of shape "
                        f"{labels.shape}: use eval.metric agreement or cosine, or a custom metric, for other labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"labels run from {labels.min()} to {labels.max()} but the model has {classes} outputs per "
                        f"sample: {metric} needs class ids in [0, outputs); check data.y_key and the label encoding")


# Per-sample hits (1: the sample scores, 0: it does not) of the metrics that are the percentage of samples
# scoring: early stopping bounds them with a binomial (evaluate/early_stop.py).
HITS: dict[str, Callable[[np.ndarray, np.ndarray | None, np.ndarray], np.ndarray | None]] = {}


def _top1_hits(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None = None) -> np.ndarray:
    _class_ids(outputs, labels, "top1")
    return outputs.reshape(len(outputs), -1).argmax(axis=1) == labels


def _top5_hits(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None = None) -> np.ndarray:
    _class_ids(outputs, labels, "top5")
    flat = outputs.reshape(len(outputs), -1)
    best = np.argpartition(-flat, min(5, flat.shape[1]) - 1, axis=1)[:, :5]
    return (best == labels[:, None]).any(axis=1)


def _decisions(outputs: np.ndarray) -> np.ndarray:
    """The arg-max over the last axis, which agreement compares; with one entry there it cannot differ."""
    if outputs.shape[-1] < 2:
        raise DataError(f"eval.metric agreement compares the arg-max over the output's last axis, which has "
                        f"{outputs.shape[-1]} entry here (shape {outputs.shape[1:]} per sample): every plan would agree "
                        "100 %; use eval.metric cosine, or a metric of your own")
    return outputs.argmax(axis=-1)


def _agreement_hits(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> np.ndarray | None:
    """Per sample only for one prediction per sample; a sequence's share of agreeing steps is not 0 or 1."""
    return _decisions(outputs) == _decisions(reference) if outputs.ndim == 2 else None


HITS.update(top1=_top1_hits, top5=_top5_hits, agreement=_agreement_hits)


def _cosine_scores(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> np.ndarray:
    """Each sample's cosine similarity to its FP32 output, × 100 (1 where either is all zero)."""
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, same, 1.0) * 100.0


def _in_percent(hits: Callable) -> Callable:
    def scores(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> np.ndarray | None:
        h = hits(outputs, labels, reference)
        return None if h is None else np.asarray(h, np.float64) * 100.0

    return scores


# Per-sample scores, in the metric's points, of the metrics that are their mean: the standard error of a drop comes
# from the paired differences of two models' scores on the same samples (drop_stderr below).
SCORES: dict[str, Callable[[np.ndarray, np.ndarray | None, np.ndarray], np.ndarray | None]] = {
    **{name: _in_percent(hits) for name, hits in HITS.items()}, "cosine": _cosine_scores}


@builtin("top1")
def top1(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None = None) -> float:
    """Top-1 accuracy in percent."""
    return float(_top1_hits(outputs, labels).mean() * 100.0)


@builtin("top5")
def top5(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None = None) -> float:
    """Top-5 accuracy in percent."""
    return float(_top5_hits(outputs, labels).mean() * 100.0)


@builtin("agreement")
def agreement(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    """Top-1 agreement with the FP32 model, in percent (the arg-max over the last axis, at every position:
    per sample for a classifier, per time step for a sequence output). Needs no labels."""
    return float((_decisions(outputs) == _decisions(reference)).mean() * 100.0)


@builtin("cosine")
def cosine(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    """Mean cosine similarity of each sample's output to the FP32 one, × 100 (embeddings, dense maps)."""
    return float(_cosine_scores(outputs, labels, reference).mean())


def _checked(spec: str, fn: Callable) -> Metric:
    try:
        takes_reference = len(inspect.signature(fn).parameters) >= 3
    except (TypeError, ValueError):  # builtins without a signature
        takes_reference = False

    def metric(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
        try:
            value = float(fn(outputs, labels, reference) if takes_reference else fn(outputs, labels))
        except Exception as exc:  # the user's function: any error is theirs to fix, said in one line
            raise DataError(f"eval.metric '{spec}' failed on the model's outputs ({exc.__class__.__name__}: "
                            f"{first_line(exc, 120)}): it must take (outputs, labels[, reference]) and return a number") from exc
        if not np.isfinite(value):
            raise DataError(f"eval.metric '{spec}' returned {value}: it must return a finite number")
        return value

    return metric


def check_metric(spec: str) -> None:
    """A metric name that is neither built in nor a code reference is a typo: said before any work."""
    if spec not in BUILTIN and ":" not in spec:
        raise ConfigError(f"eval.metric '{spec}' must be one of {', '.join(BUILTIN)}, or 'file.py:function' / "
                          "'module:function'")


def resolve_metric(spec: str, base: Path | None = None) -> Metric:
    """A built-in metric by name, or the user's `file.py:function` / `module:function`."""
    check_metric(spec)
    if spec in BUILTIN:
        return BUILTIN[spec]
    return _checked(spec, load_callable(spec, base, "eval.metric"))


def drop_stderr(scores: np.ndarray, fp32_scores: np.ndarray) -> float:
    """Standard error, in points, of a drop against FP32 scored on the same samples, for a metric that is the mean of
    per-sample scores (a hit's 0 or 100 points, a cosine × 100): the standard deviation of the paired differences
    over √N. For hits only the samples where the two disagree carry it (the paired, McNemar view), b + c of them,
    b − c net: 100 · √(b + c − (b − c)² / N) / N. A plan that misses the limit by less than a couple of these may meet
    it on other samples: its miss is the eval set's luck as much as its error."""
    a, b = np.asarray(fp32_scores), np.asarray(scores)
    if a.dtype == bool:  # hits given as themselves
        a, b = a * 100.0, b * 100.0
    a, b = a.astype(np.float64), b.astype(np.float64)
    n = len(a)
    return float(np.sqrt(np.var(a - b) / n)) if n else math.nan
