"""The error model, calibrated against the trials as they finish, proposes plans at the constraint.

The per-layer table (layer_errors.py) predicts a plan's output NMSE as a sum over its layers; a finished
trial measures the NMSE (Measurement.output_mse) and the accuracy drop. Each round, once the trials
enqueued before it have run:

1. calibration: measured ≈ a · predicted, a the geometric mean of their ratio over the quantized trials;
2. the NMSE the constraint allows, T: the geometric middle between the largest NMSE of a trial that met
   it and the smallest NMSE of one that broke it above that (twice the largest while none broke it; half
   the smallest while none met it);
3. the cheapest plans of the λ sweep and of the greedy float path (guided.py) whose calibrated prediction
   is within T · {0.6, 1, 1.6}, enqueued (Optuna's enqueue_trial, skipping plans already tried);
4. the front's gaps: of the same candidates, the ones predicted to add the most hypervolume, in (cost,
   NMSE) up to T, to the front of the trials that meet the constraint (their NMSE measured, the
   candidates' calibrated), chosen one at a time so two do not fill one gap;
5. descent: the untried plans a move or two below the cheapest trial that meets the constraint (a float
   layer back to INT8, or swapped for a cheaper one; guided.py's cheaper_neighbours) whose calibrated
   prediction is within T · 1.6, least predicted error first — local search where the export is, for
   the plans the sweep and the path cannot reach (they only ever add float layers to one base).

The sampler keeps proposing around them; the rounds narrow T on the model's own boundary between plans that
meet the constraint and plans that do not, which is where the cheapest feasible plan is, while step 4 puts
the plans a user compares against the export (more accurate for more cost) on the front.
"""

from __future__ import annotations

import functools
import math

import optuna
from optuna.trial import TrialState

from ..quantize.plan import QuantPlan
from . import trial_attrs as attrs
from .guided import ErrorModel
from .pareto import hypervolume

MARGINS = (0.6, 1.0, 1.6)
SWEEP = 64  # λ values per round
PATH = 24  # float layers added one by one to the least-error plan, as further candidates
FRONT = 2  # plans per round chosen for the hypervolume they are predicted to add
DESCENT = 3  # plans per round just below the cheapest plan that meets the constraint


def allowed_error(points: list[tuple[float, float]], max_drop: float) -> float | None:
    """T from (measured NMSE, drop) of quantized trials."""
    ok = [mse for mse, drop in points if drop <= max_drop]
    if not ok:
        return 0.5 * min(mse for mse, _ in points) if points else None
    best_ok = max(ok)
    above = [mse for mse, drop in points if drop > max_drop and mse > best_ok]
    return math.sqrt(best_ok * min(above)) if above else 2.0 * best_ok


class Refine:
    """Optuna callback: every `every` finished trials (complete or stopped early), one round of calibrated
    proposals from the complete ones."""

    def __init__(self, model: ErrorModel, max_drop: float, every: int = 8):
        self.model, self.max_drop, self.every = model, max_drop, every
        self.next_at = every
        self.rounds = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if len(done) < self.next_at or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        self.next_at = len(done) + self.every
        complete = [t for t in done if t.state == TrialState.COMPLETE]
        boundary = self.proposals(complete)
        tried = {attrs.plan(t).key() for t in study.get_trials(deepcopy=False) if attrs.plan_spec(t)}
        gaps = self.front_gaps(complete, tried | {p.key() for p in boundary})
        below = self.descent(complete, tried | {p.key() for p in boundary + gaps})
        for kind, plans in (("refined", boundary), ("front", gaps), ("descent", below)):
            for i, plan in enumerate(plans):
                study.enqueue_trial(self.model.space.params_for(plan),
                                    user_attrs=attrs.enqueue_attrs(f"{kind}-{self.rounds}-{i}"), skip_if_exists=True)  # fmt: skip
        self.rounds += 1

    @functools.cached_property
    def candidates(self) -> list:
        """The plans a round chooses from; they depend on the model only, so every round shares them."""
        return self.model.sweep(SWEEP) + self.model.float_path(self.model.least_error(), PATH)

    def calibrated(self, trials: list[optuna.trial.FrozenTrial]) -> tuple[list[tuple[QuantPlan, float, float]], float | None]:
        """(plan, measured NMSE, drop) of the quantized trials, and the scale a (measured ≈ a · predicted)."""
        measured, ratios = [], []
        for t in trials:
            result, plan = attrs.result(t), attrs.plan(t)
            if not plan.quantized or not result.output_mse > 0:
                continue
            measured.append((plan, result.output_mse, result.accuracy_drop))
            predicted = self.model.predict(plan)
            if 0 < predicted < math.inf:
                ratios.append(result.output_mse / predicted)
        return measured, math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None

    def proposals(self, trials: list[optuna.trial.FrozenTrial]) -> list:
        """The cheapest candidates whose calibrated prediction is within the NMSE the constraint allows."""
        measured, scale = self.calibrated(trials)
        allowed = allowed_error([(mse, drop) for _, mse, drop in measured], self.max_drop)
        if allowed is None or scale is None:
            return []
        sweep = self.candidates
        plans = {}
        for margin in MARGINS:
            plan = self.model.cheapest_within(allowed * margin / scale, sweep)
            if plan is not None and plan.quantized:
                plans.setdefault(plan.key(), plan)
        return list(plans.values())

    def front_gaps(self, trials: list[optuna.trial.FrozenTrial], tried: set[str]) -> list[QuantPlan]:
        """Up to FRONT untried candidates predicted to meet the constraint and to add the most hypervolume
        to the front of the trials that meet it, both in the model's terms: (cost, output NMSE) — measured
        for the trials, calibrated prediction for the candidates — up to (all-float cost, T). In measured
        drop, a plan the eval set's noise put above FP32 (ResNet-56: 82.2 % against FP32's 81.3 %) would
        outrank every candidate the model can predict, and no plan more accurate than the export would be
        proposed again; the NMSE has no such noise floor."""
        measured, scale = self.calibrated(trials)
        if scale is None or len(measured) < 3:
            return []
        allowed = allowed_error([(mse, drop) for _, mse, drop in measured], self.max_drop)
        front = [(self.model.plan_cost(plan), mse) for plan, mse, drop in measured if drop <= self.max_drop]
        pool = {}
        for plan in self.candidates:
            predicted = self.model.predict(plan) * scale
            if plan.quantized and plan.key() not in tried and 0 < predicted < allowed:
                pool[plan.key()] = (plan, (self.model.plan_cost(plan), predicted))
        picks = []
        for _ in range(FRONT):
            base = hypervolume(front, 1.0, allowed)
            gain = {k: hypervolume(front + [point], 1.0, allowed) - base for k, (_, point) in pool.items()}
            best = max(gain, key=gain.get, default=None)
            if best is None or gain[best] <= 0:
                break
            plan, point = pool.pop(best)
            picks.append(plan)
            front.append(point)
        return picks

    def descent(self, trials: list[optuna.trial.FrozenTrial], tried: set[str]) -> list[QuantPlan]:
        """Up to DESCENT untried cheaper neighbours of the cheapest trial that meets the constraint (in the
        model's cost), calibrated prediction within T · MARGINS[-1], least predicted error first."""
        measured, scale = self.calibrated(trials)
        feasible = [plan for plan, _, drop in measured if drop <= self.max_drop]
        allowed = allowed_error([(mse, drop) for _, mse, drop in measured], self.max_drop)
        if not feasible or scale is None or allowed is None:
            return []
        base = min(feasible, key=self.model.plan_cost)
        limit = allowed * MARGINS[-1] / scale
        ranked = sorted((self.model.predict(p), p.key(), p) for p in self.model.cheaper_neighbours(base)
                        if p.key() not in tried and p.quantized)  # fmt: skip
        return [p for predicted, _, p in ranked if predicted <= limit][:DESCENT]
