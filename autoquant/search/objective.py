"""Scoring one plan: build its INT8 model from the workspace cache and measure what the search optimises."""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import AutoquantError, first_line
from ..evaluate.cost import bitops_fraction
from ..evaluate.executed import count_disagreement, disagreements, executed_layers
from ..quantize.plan import QuantPlan
from ..workspace import Workspace


@dataclass(frozen=True)
class TrialResult:
    accuracy: float
    accuracy_drop: float
    bitops_fraction: float
    latency_ms: float
    latency_ratio: float
    size_bytes: int
    output_mse: float  # mean squared difference to the FP32 outputs, relative to their mean square

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


class TrialFailed(AutoquantError):
    """A plan whose model cannot be built or run, or gives non-finite outputs: that trial fails, the study goes on."""


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Raise TrialFailed in this (main) thread after `seconds`. onnxruntime releases the GIL between
    batches, so a slow or hung trial is interrupted at the next batch boundary."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TrialFailed(f"trial timed out after {seconds:g} s (search.trial_timeout_seconds)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_executed(plan: QuantPlan, model: onnx.ModelProto, optimized: onnx.ModelProto) -> None:
    """Fail the trial when onnxruntime would not run the plan as meant (e.g. re-quantizes a float layer):
    its figures would describe a model that does not run."""
    if count_disagreement(plan.weight_bits(), optimized) is None:
        return
    lines = disagreements(plan.weight_bits(), executed_layers(model))  # names the layers; only on this rare path
    raise TrialFailed(f"{lines[0]} (+{len(lines) - 1} more)" if lines else count_disagreement(plan.weight_bits(), optimized))


class PlanScorer:
    """Scores plans against a workspace; FP32 latency is measured once per study."""

    def __init__(self, ws: Workspace, timeout: float | None = None):
        self.ws, self.timeout = ws, timeout
        (self.fp32_latency_ms,) = ws.evaluator.latency_ms(ws.evaluator.session(ws.model))
        ref = ws.reference.outputs
        self._ref_power = float(np.square(ref).mean()) or 1.0
        self._tmp = tempfile.TemporaryDirectory(prefix="autoquant-trial-")
        self._optimized = Path(self._tmp.name) / "optimized.onnx"

    def __call__(self, plan: QuantPlan) -> TrialResult:
        ws, ev = self.ws, self.ws.evaluator
        try:
            with deadline(self.timeout):
                model = ws.build(plan)
                sess = ev.session(model, self._optimized)
                check_executed(plan, model, onnx.load(str(self._optimized)))
                scored = ev.score(sess)
                (latency,) = ev.latency_ms(sess)
        except TrialFailed:
            raise
        except AutoquantError as exc:
            raise TrialFailed(str(exc)) from exc
        except Exception as exc:  # onnxruntime's own error types: the plan is the problem, not the user
            raise TrialFailed(f"{exc.__class__.__name__}: {first_line(exc, 200)}") from exc
        mse = float(np.square(scored.outputs - ws.reference.outputs).mean()) / self._ref_power
        return TrialResult(scored.accuracy, ws.reference.accuracy - scored.accuracy, bitops_fraction(ws.graph, plan),
                           latency, latency / self.fp32_latency_ms, model.ByteSize(), mse)  # fmt: skip
