"""The ladder: a first plan within the limit, fast. Before anything else a study tries all-INT8 (`ladder-0`: static,
or dynamic on a model without convolutions), which needs nothing but calibration; while a rung misses the limit,
the next one (`ladder-K`) is the plan the latency table prices cheapest among those the error model, calibrated on
the rungs so far, puts within the limit — the fewest float layers, or cheaper per-layer choices (range algorithm,
granularity, mode), that it needs. The ladder ends at the first rung that meets the limit, or after
`ProposeSettings.rungs` rungs; the other warm starts follow. So a study of any size tries the error model's plans
first, and its first feasible plan (exported at once) comes after a rung or two rather than after every uniform
plan.

A rung that misses by less than the eval set can tell (a couple of its drop's standard errors: near a limit of a
tenth of a point, which samples are scored decides as much as the plan does) is followed first by a variant
(`ladder-K-ranges`): its own kernels with other activation ranges or weight granularity, as fast as it, ranked by
the layers' own errors alone, which take a fraction of the time the error model's per-layer gains do.

Where the limit lies in output NMSE is read off the rungs: the drop of a plan grows with its output NMSE, about as a
power of it; a line through (log NMSE, log drop) of the rungs so far, inside the bracket of the rungs that met and
broke the limit, says at which NMSE the drop reaches the limit (a secant step on that boundary). A rung stopped early
counts with its prefix's figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from ...graph.layers import LayerInfo
from ...quantize import modes
from ...quantize.plan import LayerChoice, QuantPlan
from .. import trial_attrs as attrs
from ..estimate.error_model import ErrorModel
from ..estimate.layer_errors import LayerErrors
from ..space import SearchSpace
from .scheduler import History, Labelled, Proposal
from .settings import SETTINGS, ProposeSettings

PREFIX = "ladder-"
VARIANT = "-ranges"  # the suffix of a rung that keeps the kernels of the rung it varies


def first_rung(space: SearchSpace, layers: Sequence[LayerInfo]) -> Labelled:
    """All-INT8 per channel: what every quantizer tries first; it needs no per-layer estimate. Static (minmax, with
    bias correction where the space offers it: Mode.recipe_choice) on a model with convolutions; on one without (a
    transformer's MatMul/Gemm layers), dynamic, onnxruntime's recipe for those models: static INT8 of their
    activations often misses any limit (8 pt on MiniLM, where dynamic loses 0.7), and the second rung would wait a
    minute for the per-layer tables. Each layer takes the nearest choice the space offers it."""
    choice = modes.recipe_choice(layers)
    return f"{PREFIX}0", QuantPlan(tuple((s.name, s.nearest(choice)) for s in space.layers))


def boundary(points: list[tuple[float, float]], max_drop: float) -> float | None:
    """The output NMSE at which the drop reaches `max_drop`, from (NMSE, drop) of measured plans."""
    points = [(n, d) for n, d in points if n > 0 and math.isfinite(n) and math.isfinite(d)]
    if not points:
        return None
    lo = max((n for n, d in points if d <= max_drop), default=0.0)
    hi = min((n for n, d in points if d > max_drop and n > lo), default=math.inf)
    fit = [(math.log(n), math.log(d)) for n, d in points if d > 0]
    guess = None
    if max_drop > 0 and fit:
        x, y = np.array(fit).T
        slope = float(np.polyfit(x, y, 1)[0]) if len(set(x)) > 1 else 1.0
        if slope > 0:
            guess = math.exp(float(np.mean(x)) + (math.log(max_drop) - float(np.mean(y))) / slope)
    if guess is not None and lo < guess < hi:
        return guess
    if lo > 0 and hi < math.inf:
        return math.sqrt(lo * hi)
    return hi / 2 if hi < math.inf else 2 * lo


class Ladder:
    """Proposer (scheduler.py): the first rung when the study starts; after each rung, the next rung, or the end of
    the ladder (its finished mark is the study attribute `ladder_done`, which the warm starts wait for)."""

    name = "ladder"

    def __init__(self, space: SearchSpace, layers: Sequence[LayerInfo], max_drop: float, fp32_accuracy: float,
                 model: Callable[[], ErrorModel], local: Callable[[], LayerErrors],
                 fit_deciding: Callable[[QuantPlan], bool] = lambda plan: False, settings: ProposeSettings = SETTINGS):
        """`model`: the error model priced in latency (computed when first asked: the first rung needs none);
        `local`: the per-layer errors without their gains (what a variant rung is ranked by); `fit_deciding`: makes
        the costly choices of the layers deciding a plan and prices them (Study.fit_deciding; True when the model
        changed), asked when the ladder ends, for the plan of the rung that met the limit (or the last one): the
        first feasible plan does not wait for the fits, the plans after the ladder are priced with them."""
        self.space, self.layers, self.max_drop, self.fp32 = space, layers, max_drop, fp32_accuracy
        self.model, self.local, self.fit_deciding, self.settings = model, local, fit_deciding, settings

    def propose(self, history: History) -> Proposal:
        """The next rung, or the end of the ladder, unless a rung is still to run (here or in another worker; a
        resumed study whose last rung was lost to a kill goes on from here)."""
        rungs = history.labelled(PREFIX)
        if not rungs:
            return Proposal([first_rung(self.space, self.layers)])
        if any(t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in rungs):
            return Proposal()
        met = [attrs.plan(t) for t in rungs if t.state == TrialState.COMPLETE
               and attrs.result(t).accuracy_drop <= self.max_drop and attrs.plan(t).quantized]
        if not met and len(rungs) < self.settings.rungs:
            step, suffix = self.variant(rungs, history.tried), VARIANT
            if step is None:
                step, suffix = self.next_rung(rungs, history.tried), ""
            if step is not None:
                return Proposal([(f"{PREFIX}{len(rungs)}{suffix}", step)])
        if len(rungs) >= 2:  # the first rung did not meet the limit: for the plans that follow the ladder
            self.fit_deciding(met[-1] if met else attrs.plan(rungs[-1]))
        return Proposal(finished=True)

    @property
    def candidates(self) -> list[QuantPlan]:
        """The plans a rung chooses from (the model keeps them: every rung with one model shares them)."""
        return self.model().candidates(self.settings.sweep)

    def measured(self, trials: list[optuna.trial.FrozenTrial]) -> list[tuple[QuantPlan, float, float]]:
        """(plan, output NMSE, drop) of the quantized trials, a stopped one with its prefix's figures."""
        return [(attrs.plan(t), *f) for t in trials
                if attrs.plan(t).quantized and (f := attrs.figures(t, self.fp32, self.max_drop)) is not None]

    def variant(self, rungs: list[optuna.trial.FrozenTrial], tried: set[str]) -> QuantPlan | None:
        """When the rung closest to the limit missed it by at most `settings.noise_z` standard errors of its drop
        (Measurement.drop_stderr; NaN for a metric without per-sample hits: never), its plan with every quantized
        layer on one other (activation range algorithm, weight granularity) where the layer is offered it: the
        same kernels, so as fast. The untried one whose layers' summed local error is least, if within
        `settings.variant_error` × the rung's; at most `settings.variants` of them in a ladder."""
        if sum(attrs.label(t).endswith(VARIANT) for t in rungs) >= self.settings.variants:
            return None
        missed = [(r, attrs.plan(t)) for t in rungs
                  if t.state == TrialState.COMPLETE and (r := attrs.result(t)) is not None and attrs.plan(t).quantized]
        if not missed:
            return None
        closest, plan = min(missed, key=lambda m: m[0].accuracy_drop)
        if not closest.accuracy_drop - self.max_drop <= self.settings.noise_z * closest.drop_stderr:
            return None
        local = self.local()
        offered = {layer.name: set(layer.options) for layer in self.space.layers}
        keys = {(o.mode, key) for n in plan.quantized for o in offered[n] if o.quantize
                and (key := modes.get(o.mode).variant_key(o)) is not None}

        def error(p: QuantPlan) -> float:
            return sum(local.of(n, c) for n, c in p.choices)

        variants = [QuantPlan(tuple((n, _variant(c, key, offered[n])) for n, c in plan.choices)) for key in sorted(keys)]
        bound = error(plan) * self.settings.variant_error
        return min((v for v in variants if v.key() not in tried and error(v) <= bound), key=error, default=None)

    def next_rung(self, rungs: list[optuna.trial.FrozenTrial], tried: set[str]) -> QuantPlan | None:
        """The cheapest plan (the latency table's price) of the error model's untried candidates whose calibrated
        predicted NMSE is within the boundary × `settings.ladder_margin`; when the model puts none there (a drop
        that falls slowly with the NMSE: near-tie decisions), the candidate it predicts most accurate."""
        measured = self.measured(rungs)
        target = boundary([(n, d) for _, n, d in measured], self.max_drop)
        model = self.model()
        ratios = [n / p for plan, n, _ in measured if n > 0 and 0 < (p := model.predict(plan)) < math.inf]
        if target is None or not ratios:
            return None
        scale = math.exp(sum(map(math.log, ratios)) / len(ratios))
        untried = [p for p in self.candidates if p.quantized and p.key() not in tried]
        ok = [p for p in untried if model.predict(p) * scale <= target * self.settings.ladder_margin]
        if ok:
            return min(ok, key=lambda p: (model.plan_cost(p), model.predict(p)))
        return min(untried, key=lambda p: (model.predict(p), model.plan_cost(p)), default=None)


def _variant(choice: LayerChoice, key: tuple[str, tuple], offered: set[LayerChoice]) -> LayerChoice:
    """`choice` with the same-kernel variant `key` (its mode and Mode.variant_key) if it is of that mode and its
    layer is offered the variant."""
    mode, variant = key
    if choice.mode != mode:
        return choice
    other = modes.get(mode).with_variant(choice, variant)
    return other if other in offered else choice
