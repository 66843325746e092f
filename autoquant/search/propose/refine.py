"""The error model, calibrated against the trials as they finish, proposes plans at the constraint.

The per-layer table (estimate/layer_errors.py) predicts a plan's output NMSE as a sum over its layers; a finished
trial measures the NMSE (Measurement.output_mse) and the accuracy drop. Each round, once the trials
enqueued before it have run:

1. calibration: measured ≈ a · predicted, a the geometric mean of their ratio over the quantized trials (a trial
   stopped early with its prefix's figures);
2. the NMSE the constraint allows, T: the geometric middle between the largest NMSE of a trial that met
   it and the smallest NMSE of one that broke it above that (twice the largest while none broke it; half
   the smallest while none met it);
3. the cheapest plans of the λ sweep and of the greedy float path (estimate/error_model.py) whose calibrated prediction
   is within T · {0.6, 1, 1.6} and that no trial measured yet, proposed (the scheduler enqueues them);
4. the front's gaps: of the same candidates, the ones predicted to add the most hypervolume, in (cost,
   NMSE) up to T, to the front of the trials that meet the constraint (their NMSE measured, the
   candidates' calibrated), chosen one at a time so two do not fill one gap;
5. descent: the untried plans a move or two below the cheapest trial that meets the constraint (a float
   layer back to INT8, or swapped for a cheaper one; ErrorModel.cheaper_neighbours) whose calibrated
   prediction is within T · 1.6, least predicted error first — local search where the export is, for
   the plans the sweep and the path cannot reach (they only ever add float layers to one base).

The sampler keeps proposing around them; the rounds narrow T on the model's own boundary between plans that
meet the constraint and plans that do not, which is where the cheapest feasible plan is, while step 4 puts
the plans a user compares against the export (more accurate for more cost) on the front.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from ...quantize.plan import QuantPlan
from .. import trial_attrs as attrs
from ..estimate.error_model import Calibration, ErrorModel, Measured
from ..select import hypervolume
from .scheduler import History, Proposal
from .settings import SETTINGS, ProposeSettings


class Refine:
    """Proposer (scheduler.py): one round of calibrated proposals when the proposer `after` (the ladder) is finished —
    before the fixed warm starts, so that a small trial budget runs the error model's plans at the limit — then
    every `settings.every` finished trials (complete or stopped early), once the trials enqueued before have run."""

    name = "refine"

    def __init__(self, model: ErrorModel | Callable[[], ErrorModel], max_drop: float, fp32_accuracy: float,
                 settings: ProposeSettings = SETTINGS, after: str | None = None):
        """`model`: the error model, or what makes it when asked (a study's first rounds come after its estimates
        are made; the study's model may change, e.g. when adaptive rounding is priced for the layers deciding the
        plan)."""
        self._model, self.max_drop, self.fp32, self.settings, self.after = model, max_drop, fp32_accuracy, settings, after
        self.next_at = settings.every
        self.rounds = 0

    @property
    def model(self) -> ErrorModel:
        return self._model if isinstance(self._model, ErrorModel) else self._model()

    def propose(self, history: History) -> Proposal:
        done = history.done
        first = self.rounds == 0 and self.after is not None and self.after in history.finished and bool(done)
        if (len(done) < self.next_at and not first) or history.waiting:
            return Proposal()
        self.next_at = len(done) + self.settings.every
        tried = history.tried
        boundary = self.proposals(done, tried)
        gaps = self.front_gaps(done, tried | {p.key() for p in boundary})
        below = self.descent(done, tried | {p.key() for p in boundary + gaps})
        plans = [(f"{kind}-{self.rounds}-{i}", plan)
                 for kind, group in (("refined", boundary), ("front", gaps), ("descent", below))
                 for i, plan in enumerate(group)]
        self.rounds += 1
        return Proposal(plans)

    @property
    def candidates(self) -> list[QuantPlan]:
        """The plans a round chooses from (the model keeps them: every round with one model shares them)."""
        return self.model.candidates(self.settings.sweep)

    def calibrated(self, trials: list[optuna.trial.FrozenTrial]) -> Calibration:
        """The model calibrated against the quantized trials, complete or stopped early (with their prefix's
        figures: in a study where most plans are stopped, they are most of what says where the limit is)."""
        measured = []
        for t in trials:
            plan, figures = attrs.plan(t), attrs.figures(t, self.fp32, self.max_drop)
            if plan.quantized and figures is not None and figures[0] > 0:
                measured.append(Measured(plan, *figures))
        return Calibration.of(self.model, measured, self.max_drop)

    def proposals(self, trials: list[optuna.trial.FrozenTrial], tried: set[str]) -> list[QuantPlan]:
        """The cheapest untried candidates whose calibrated prediction is within the NMSE the limit allows × each
        margin. Untried: where the cheapest is already measured (the ladder takes the same candidates), the
        next one is what the round has to offer."""
        cal = self.calibrated(trials)
        if cal.allowed is None or cal.scale is None:
            return []
        untried = [p for p in self.candidates if p.quantized and p.key() not in tried]
        plans = {}
        for margin in self.settings.margins:
            plan = self.model.cheapest_within(cal.allowed * margin / cal.scale, untried)
            if plan is not None:
                plans.setdefault(plan.key(), plan)
        return list(plans.values())

    def front_gaps(self, trials: list[optuna.trial.FrozenTrial], tried: set[str]) -> list[QuantPlan]:
        """Up to `settings.front` untried candidates predicted to meet the limit and to add the most hypervolume to
        the front of the trials that meet it, both in the model's terms: (cost, output NMSE) — measured for the
        trials, calibrated prediction for the candidates — up to (all-float cost, the NMSE allowed). In measured
        drop, a plan the eval set's noise put above FP32 would outrank every candidate the model can predict, and
        no plan more accurate than the export would be proposed again; the NMSE has no such noise floor."""
        cal = self.calibrated(trials)
        if cal.scale is None or len(cal.trials) < 3:
            return []
        front = [(self.model.plan_cost(t.plan), t.nmse) for t in cal.feasible(self.max_drop)]
        pool = {}
        for plan in self.candidates:
            predicted = self.model.predict(plan) * cal.scale
            if plan.quantized and plan.key() not in tried and 0 < predicted < cal.allowed:
                pool[plan.key()] = (plan, (self.model.plan_cost(plan), predicted))
        picks = []
        for _ in range(self.settings.front):
            base = hypervolume(front, 1.0, cal.allowed)
            gain = {k: hypervolume(front + [point], 1.0, cal.allowed) - base for k, (_, point) in pool.items()}
            best = max(gain, key=gain.get, default=None)
            if best is None or gain[best] <= 0:
                break
            plan, point = pool.pop(best)
            picks.append(plan)
            front.append(point)
        return picks

    def descent(self, trials: list[optuna.trial.FrozenTrial], tried: set[str]) -> list[QuantPlan]:
        """Up to `settings.descent` untried cheaper neighbours of the cheapest trial that meets the limit (in the
        model's cost), calibrated prediction within the NMSE allowed × the largest margin, least predicted error
        first."""
        cal = self.calibrated(trials)
        feasible = [t.plan for t in cal.feasible(self.max_drop)]
        if not feasible or cal.scale is None or cal.allowed is None:
            return []
        base = min(feasible, key=self.model.plan_cost)
        limit = cal.allowed * self.settings.margins[-1] / cal.scale
        ranked = sorted((self.model.predict(p), p.key(), p) for p in self.model.cheaper_neighbours(base)
                        if p.key() not in tried and p.quantized)
        return [p for predicted, _, p in ranked if predicted <= limit][: self.settings.descent]
