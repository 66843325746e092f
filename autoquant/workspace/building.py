"""Building a plan's model from what is prepared: the CPU's weight range, what the modes keep across builds of the
model, the recovery tables (adaptive rounding, bias shifts) fitted as plans ask for them, and the build itself."""

from __future__ import annotations

import functools
import logging
import os

import numpy as np
import onnx

from ..finetune.weights import with_weights
from ..quantize import modes
from ..quantize.build import build_model
from ..quantize.plan import QuantPlan
from ..quantize.recovery import recovers
from ..quantize.recovery.tables import RecoverySource, RecoveryTables
from ..quantize.scales import ActivationParams
from ..quantize.weight_range import TARGET_ENV
from ..quantize.weight_range import resolve as resolve_weight_range
from .calibration import Calibration
from .model import PreparedData

log = logging.getLogger(__name__)


class Builder:
    def __init__(self, data: PreparedData, calibration: Calibration):
        self.data, self.calibration, self.exp = data, calibration, data.exp

    @functools.cached_property
    def weight_range(self) -> str:
        """"full" or "reduced": quantization.weight_range with `auto` resolved for this CPU."""
        q = self.exp.quantization
        resolved = resolve_weight_range(q.weight_range, q.activation_type)
        if q.weight_range == "auto" and resolved == "reduced":
            why = (f"{TARGET_ENV} says so" if os.environ.get(TARGET_ENV) else
                   "this CPU's uint8 x int8 kernels saturate (no VNNI)")
            log.info("%s: weights use 7 bits (quantization.weight_range: full overrides)", why)
        return resolved

    @functools.cached_property
    def cache(self) -> modes.BuildCache:
        return modes.BuildCache(self.data.model)

    @functools.cached_property
    def recovery(self) -> RecoveryTables:
        """Adaptive rounding and bias shifts of this model on this calibration data, computed as plans ask."""
        d = self.data
        return RecoveryTables(RecoverySource(
            d.model, d.model_key, d.graph, d.splits.calibration, frozenset(i.name for i in d.prepared.inputs),
            self.calibration.range_params, self.exp.quantization.activation_type, self.weight_range, self.exp.cache,
            d.threads, d.calibration_batches))

    def build(self, plan: QuantPlan, params: dict[str, ActivationParams] | None = None,
              weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
        params = params if params is not None else self.calibration.activations(plan)[0]
        recovering = [(layer, plan[layer.name]) for layer in self.data.graph.layers if recovers(plan[layer.name])]
        if recovering:  # fitted here, with a progress bar, rather than one by one inside the builder
            self.recovery.prepare(recovering)
        model = self.data.model if weights is None else with_weights(self.data.model, weights)
        return build_model(model, self.data.graph, plan, params, self.exp.quantization.activation_type,
                           self.weight_range, self.cache if weights is None else None, self.recovery)
