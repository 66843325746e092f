"""One measurement path: a model — built from a plan, exported, deployed, or any ONNX file — scored on
the experiment's eval data against its FP32 reference. The search's trials, `quantize`, the export,
`evaluate` and `reoptimize` all measure through here, so their figures mean the same thing.
"""

from __future__ import annotations

import functools
import hashlib
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .errors import ModelError
from .evaluate.cost import bitops_fraction
from .evaluate.early_stop import EarlyStop, Hopeless
from .evaluate.executed import count_disagreement, disagreements, executed_layers
from .evaluate.latency import slower_than
from .evaluate.metrics import SCORES, drop_stderr
from .quantize.plan import QuantPlan
from .workspace import Workspace


@dataclass(frozen=True)
class Measurement:
    accuracy: float  # the experiment's metric on the eval split
    accuracy_drop: float  # FP32 minus this, in the metric's points
    bitops_fraction: float  # of all-FP32 (NaN for a model measured without its plan)
    latency_ms: float  # median per batch of eval.latency_batch_size (NaN: not timed)
    latency_ratio: float  # to FP32, timed in the same interleaved rounds (NaN: not timed)
    size_bytes: int
    output_mse: float  # mean squared difference to the FP32 outputs, relative to their mean square
    model_sha256: str  # of the serialized model measured ("": not known, e.g. a result stored by an older autoquant)
    latency_rounds: int = field(default=0, kw_only=True)  # interleaved rounds the latency is the median of (0: not timed, or not known)
    # The drop's standard error from which eval samples happen to be scored (NaN: the metric has no per-sample hits,
    # or a result stored by an older autoquant): drop_stderr().
    drop_stderr: float = field(default=math.nan, kw_only=True)

    def to_dict(self) -> dict[str, float | str]:
        return {k: v if isinstance(v, str) else float(v) for k, v in asdict(self).items()}

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.to_dict().items() if isinstance(v, float)}


@dataclass(frozen=True)
class Timing:
    """How precisely a search trial needs its latency. Under objective latency the export is the fastest plan
    that meets the constraint, chosen among those within `bar` × FP32 (the study re-times them side by side,
    search/study.py: retime_fastest); a plan the rounds show slower than that (evaluate/latency.py:
    slower_than), or one that breaks the constraint, cannot be the export, and its figure only places it on
    the front: its timing stops early."""

    max_drop: float
    bar: float  # ratio to FP32


class ExecutedMismatch(ModelError):
    """onnxruntime would not run a plan as written (e.g. it re-quantizes a float layer)."""


class Meter:
    """Measures models against one workspace: the FP32 session and its latency are made once."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._tmp = tempfile.TemporaryDirectory(prefix="autoquant-measure-")
        self._optimized = Path(self._tmp.name) / "optimized.onnx"

    @functools.cached_property
    def fp32_blob(self) -> bytes:
        return self.ws.fp32_model.SerializeToString()

    def latency(self, model: bytes, bar: float = math.inf) -> tuple[float, float, int]:
        """(ms per batch, ratio to FP32, rounds): the two timed side by side in the same rounds, every round of
        eval.latency_repeats unless, from FEW_ROUNDS on, the rounds show it slower than `bar` × FP32."""
        enough = None if bar == math.inf else (lambda rounds: slower_than(rounds, 0, 1, bar))
        return paired_figures(self.paired_rounds([model], enough))[0]

    def latencies(self, models: list[bytes]) -> list[tuple[float, float, int]]:
        """latency() of several models, timed in the same rounds with one FP32 run per round: FP32 then takes
        1/(n+1) of the timing instead of half of it."""
        return paired_figures(self.paired_rounds(models))

    def paired_rounds(self, models: list[bytes], enough=None, repeats: int = 0) -> np.ndarray:
        """Every round's milliseconds of `models` (serialized) and, in the last column, of FP32, timed side by
        side, in at least `repeats` rounds and eval.latency_repeats. The models' sessions in the timing process
        are dropped afterwards (FP32's stays)."""
        ev = self.ws.evaluator
        try:
            return ev.latency_rounds(*models, self.fp32_blob, enough=enough, repeats=repeats)
        finally:
            fp32 = ev.timer.load(self.fp32_blob)
            for m in models:
                key = ev.timer.load(m)
                if key != fp32:
                    ev.timer.drop(key)

    @functools.cached_property
    def _reference_power(self) -> float:
        return float(np.square(self.ws.reference.outputs).mean()) or 1.0

    def _nmse(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        """Mean squared difference to FP32's outputs, relative to their mean square over the whole eval set."""
        return float(np.square(outputs - reference).mean()) / self._reference_power

    def __call__(self, model: onnx.ModelProto, plan: QuantPlan | None = None, *, timed: bool = False,
                 screen: EarlyStop | None = None, timing: Timing | None = None) -> Measurement:
        """Score `model`. With its `plan`, the graph onnxruntime optimized is checked against it first (one
        integer kernel per quantized layer, one float kernel per other one). `timed` times the model and FP32
        interleaved in the same rounds (latency NaN otherwise: a ratio to an FP32 figure measured at another
        time drifts with the machine's load), every round unless `timing` says fewer will do. `screen` first
        scores a prefix of the eval set and raises Hopeless when it shows the plan cannot meet the constraint."""
        ws, ev = self.ws, self.ws.evaluator
        blob = model.SerializeToString()
        sess = ev.session(blob, self._optimized if plan is not None else None)
        if plan is not None:
            check_executed(plan, model, onnx.load(str(self._optimized)))
        head = None
        for rows in screen.looks if screen is not None else ():
            head = ev.outputs(sess, head=head, rows=rows)
            try:
                screen.check(head)
            except Hopeless as exc:  # what the prefix says of its error, for proposers that learn from it
                exc.prefix_nmse = self._nmse(head, ws.reference.outputs[: len(head)])
                raise
        scored = ev.score(sess, head)
        drop = ws.reference.accuracy - scored.accuracy
        bar = math.inf if timing is None else 0.0 if drop > timing.max_drop else timing.bar
        ms, ratio, rounds = self.latency(blob, bar) if timed else (math.nan, math.nan, 0)
        mse = self._nmse(scored.outputs, ws.reference.outputs)
        bitops = bitops_fraction(ws.graph, plan) if plan is not None else math.nan
        return Measurement(scored.accuracy, drop, bitops, ms, ratio, len(blob), mse, hashlib.sha256(blob).hexdigest(),
                           latency_rounds=rounds, drop_stderr=self._drop_stderr(scored.outputs))

    @functools.cached_property
    def _scores(self):
        """(the metric's per-sample scores, FP32's), or None for a metric that is not a mean of per-sample scores."""
        ws = self.ws
        scores = SCORES.get(ws.exp.eval.metric)
        reference = ws.reference.outputs
        fp32 = None if scores is None else scores(reference, ws.evaluator.data.y, reference)
        return None if fp32 is None else (scores, fp32)

    def _drop_stderr(self, outputs: np.ndarray) -> float:
        if self._scores is None:
            return math.nan
        scores, fp32 = self._scores
        return drop_stderr(scores(outputs, self.ws.evaluator.data.y, self.ws.reference.outputs), fp32)


def paired_figures(rounds: np.ndarray) -> list[tuple[float, float, int]]:
    """(ms, ratio to FP32, rounds) per session of Meter.paired_rounds' rounds: medians, FP32 last."""
    *ms, fp32_ms = np.median(rounds, axis=0)
    return [(float(m), float(m / fp32_ms), len(rounds)) for m in ms]


def check_executed(plan: QuantPlan, model: onnx.ModelProto, optimized: onnx.ModelProto) -> None:
    """Refuse a model onnxruntime would not run as the plan says: its figures would describe a model that
    does not run. The cheap count runs on the graph the measuring session optimized anyway; only a
    mismatch traces the layers to name them."""
    if count_disagreement(plan.runs(), optimized) is None:
        return
    lines = disagreements(plan.runs(), executed_layers(model)) or [count_disagreement(plan.runs(), optimized)]
    more = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
    hint = ("autoquant's float-layer construction failed on this onnxruntime: please report it"
            if "meant to run float" in lines[0] else
            "onnxruntime has no integer kernel for it in this graph: keep it float in the plan, or try "
            "quantization.activation_type uint8")
    raise ExecutedMismatch(f"onnxruntime {ort.__version__} would not run this plan as written: {lines[0]}{more}; {hint}")
