"""The full sensitivity table (`autoquant sensitivity --full`): one layer at a time INT8 (per-channel, minmax), the
rest float, each model built and scored on the whole eval set — exact, and one full evaluation per layer, so studies
use the cheap per-layer, per-choice errors instead (estimate/layer_errors.py)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from ..calibrate.cache import cached_arrays
from ..quantize.plan import FLOAT, LayerChoice, QuantPlan
from ..workspace import Workspace
from .objective import PlanScorer, TrialFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    accuracy_drop: float  # points lost when only this layer is INT8
    output_mse: float  # relative MSE of the outputs against FP32: finer-grained than accuracy


def single_layer_plan(ws: Workspace, name: str) -> QuantPlan:
    return QuantPlan(tuple((n, LayerChoice.default() if n == name else FLOAT) for n in ws.graph.names))


def layer_sensitivity(ws: Workspace, scorer: PlanScorer | None = None, progress=None) -> list[LayerSensitivity]:
    """Sensitivities in graph order, from the cache when this model and data were measured before."""

    def build():
        ws.reference  # noqa: B018 - a metric that cannot score this data fails here, once, not once per layer
        score = scorer or PlanScorer(ws)
        drops, mses = [], []
        for i, name in enumerate(ws.graph.names):
            try:
                r = score(single_layer_plan(ws, name))
                drops.append(r.accuracy_drop)
                mses.append(r.output_mse)
            except TrialFailed as exc:  # a layer that cannot be quantized alone is the most sensitive
                log.warning("sensitivity of %s: %s", name, exc)
                drops.append(np.nan)
                mses.append(np.inf)
            if progress:
                progress(i + 1, len(ws.graph.names), name)
        return {"drop": np.array(drops), "mse": np.array(mses)}

    ev = ws.splits.eval
    key = f"sensitivity-v2:{ws.sha}:{ws.splits.calibration.sha256()}:{ev.sha256()}:{ws.exp.quantization}:{ws.weight_range}:{ws.exp.eval.metric}"
    path = ws.exp.cache / "sensitivity" / f"{ws.sha[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    arrays = cached_arrays(path, key, build)
    return [LayerSensitivity(n, float(d), float(m)) for n, d, m in zip(ws.graph.names, arrays["drop"], arrays["mse"])]


def most_sensitive(rows: list[LayerSensitivity], k: int) -> list[str]:
    return [r.layer for r in sorted(rows, key=lambda r: (r.output_mse, r.accuracy_drop), reverse=True)[:k]]
