"""Workspace: everything about one experiment that does not depend on the plan, computed once, behind one facade.

Its parts, in the order a study needs them: the model and data (model.py: splits, the pre-processed and the
smoothed model, the graph), calibration (calibration.py: statistics from one pass, cached on disk, and ranges per
tensor and algorithm), the FP32 reference (reference.py: the evaluator and FP32's outputs, cached on disk) and
building (building.py: the weight range, the modes' build cache, recovery tables, the build). Each piece is computed
when first used: a command pays only for what it needs (`autoquant layers` loads no data for an ONNX model and never
scores FP32). Building a plan's model from here never runs calibration data through a network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx

from ..calibrate.stats import TensorStats
from ..config import Experiment
from ..data import Splits
from ..evaluate.evaluator import EvalResult, Evaluator
from ..evaluate.metrics import check_metric
from ..graph.ingest import PreparedModel
from ..graph.layers import GraphInfo
from ..quantize import modes
from ..quantize.plan import QuantPlan
from ..quantize.recovery.tables import RecoveryTables
from ..quantize.scales import ActivationParams
from ..quantize.smoothing import Smoothing
from ..runtime import Batches
from ..sources import check as check_sources
from .building import Builder
from .calibration import Calibration
from .model import PreparedData
from .reference import Reference

__all__ = ["Timings", "Workspace"]


@dataclass(frozen=True)
class Timings:
    """Seconds spent on per-study work in this process (0 when read from cache or not needed yet)."""

    prepare: float
    calibration: float
    reference: float
    sensitivity: float = 0.0  # per-layer errors and, under objective latency, the latency table
    conclusion: float = 0.0  # after the trials: timing the front, choosing and writing the export
    confirmation: float = 0.0  # scoring export candidates on the confirmation split (search/confirm.py)


class Workspace:
    """Per-experiment state, each piece computed on first use and then kept."""

    def __init__(self, exp: Experiment):
        check_sources(exp)  # an unknown model or data source, or metric, fails before any work
        check_metric(exp.eval.metric)
        self.exp = exp
        self._seconds: dict[str, float] = {}
        self.data = PreparedData(exp, self._seconds)
        self.calibration = Calibration(self.data, self._seconds)
        self.scoring = Reference(self.data, self._seconds)
        self.builder = Builder(self.data, self.calibration)

    def close(self) -> None:
        """Release what outlives a call: the timing process (it starts again if the workspace times more)."""
        self.scoring.close()

    @property
    def timings(self) -> Timings:
        return Timings(**{f.name: self._seconds.get(f.name, 0.0) for f in dataclasses.fields(Timings)})

    def add_seconds(self, phase: str, seconds: float) -> None:
        """Count time a caller spent on a phase of Timings for this workspace (a study's sensitivity pass)."""
        self._seconds[phase] = self._seconds.get(phase, 0.0) + seconds

    # -- the model and data --------------------------------------------------------------------------------
    @property
    def source_splits(self) -> Splits:
        return self.data.source_splits

    @property
    def splits(self) -> Splits:
        return self.data.splits

    @property
    def prepared(self) -> PreparedModel:
        return self.data.prepared

    @property
    def fp32_model(self) -> onnx.ModelProto:
        return self.data.fp32_model

    @property
    def model(self) -> onnx.ModelProto:
        return self.data.model

    @property
    def smoothing(self) -> Smoothing | None:
        return self.data.smoothing

    @property
    def sha(self) -> str:
        return self.data.sha

    @property
    def model_key(self) -> str:
        return self.data.model_key

    @property
    def graph(self) -> GraphInfo:
        return self.data.graph

    @property
    def fixed_batch(self) -> int | None:
        return self.data.fixed_batch

    @property
    def calibration_batches(self) -> Batches:
        return self.data.calibration_batches

    # -- calibration ---------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, TensorStats]:
        return self.calibration.stats

    def range_params(self, tensor: str, algorithm: str) -> ActivationParams:
        return self.calibration.range_params(tensor, algorithm)

    def precompute_ranges(self, algorithms) -> None:
        self.calibration.precompute_ranges(algorithms)

    def activations(self, plan: QuantPlan) -> tuple[dict[str, ActivationParams], dict[str, str]]:
        return self.calibration.activations(plan)

    # -- the FP32 reference --------------------------------------------------------------------------------
    @property
    def evaluator(self) -> Evaluator:
        return self.scoring.evaluator

    @property
    def reference(self) -> EvalResult:
        return self.scoring.reference

    # -- building --------------------------------------------------------------------------------------------
    @property
    def weight_range(self) -> str:
        return self.builder.weight_range

    @property
    def build_cache(self) -> modes.BuildCache:
        return self.builder.cache

    @property
    def recovery(self) -> RecoveryTables:
        return self.builder.recovery

    def build(self, plan: QuantPlan, params: dict[str, ActivationParams] | None = None,
              weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
        """The plan's QDQ model; `params` are the plan's activations() when the caller already has them; `weights`
        replace initializers of the model by name (fine-tuned ones: their grids are computed from them)."""
        return self.builder.build(plan, params, weights)
