"""The error model's plans across the cost range, enqueued before the sampler runs: every layer at its least-error
choice (`guided-int8`), that plan with k layers float along the greedy path (`guided-k-float`), and the plans of
a λ sweep (`guided-budget-*`), where modes and bit widths that differ in cost compete."""

from __future__ import annotations

from ..estimate.error_model import ErrorModel
from .scheduler import Labelled
from .settings import SETTINGS, ProposeSettings


def guided_plans(model: ErrorModel, settings: ProposeSettings = SETTINGS) -> list[Labelled]:
    base = model.least_error()
    path = model.float_path(base, max(settings.float_counts))
    plans = [("guided-int8", base)] + [(f"guided-{k}-float", path[k - 1]) for k in settings.float_counts if k <= len(path)]
    known = {p.key() for _, p in plans}
    budget = [(f"guided-budget-{i}", p) for i, p in enumerate(model.sweep(settings.budget_plans))]
    return plans + [(label, p) for label, p in budget if p.key() not in known]
