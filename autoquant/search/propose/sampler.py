"""The study's sampler: Optuna's NSGA-II (or TPE, or random search), with NSGA-II's fresh draws of a layer's
option — a mutation, or a plan of the first generation that no warm start filled — taken from the options
the per-layer error table does not rule out, instead of from all of them.

Why: NSGA-II draws a categorical parameter it does not inherit uniformly from its choices. In the default
space 5 of a layer's 11 options are per-tensor, which on depthwise networks add several times the error of the
same layer per channel: plans drawn uniformly hold a dozen per-tensor layers and are stopped early, far below
any limit. An option is ruled out when another option of the same layer costs no more and adds less than a
`ProposeSettings.plausible`-th of its error: float (no error) is never ruled out; int4 is not ruled out by
INT8, which costs more.

Optuna's NSGA-II has no hook for a categorical mutation (its `mutation` argument applies to numerical
parameters only): the draw goes through `sample_independent`, which this subclass overrides.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler

from ...config import SearchConfig
from ...quantize.modes import encode
from ..estimate.error_model import ErrorModel
from .settings import SETTINGS


def plausible_options(model: ErrorModel, factor: float = SETTINGS.plausible) -> dict[str, tuple[str, ...]]:
    """Per layer, the encoded choices (Optuna's values) no other choice of that layer rules out (costs no more,
    less than 1/factor of the error)."""
    out = {}
    for s in model.space.layers:
        err = {c: model.err[s.name, c] for c in s.options}
        cost = {c: model.cost.layer(s.name, c) for c in s.options}
        out[s.name] = tuple(encode(c) for c in s.options
                            if not any(cost[p] <= cost[c] and factor * err[p] < err[c] for p in s.options if p != c))
    return out


class GuidedNSGAII(NSGAIISampler):
    """NSGA-II whose fresh draws of a layer's option are uniform over its plausible options under the error model
    `model()` (asked at the first draw: the error table it reads is made after a study's first trials; read again
    when the study's model changes, e.g. when adaptive rounding is priced for the layers deciding the plan)."""

    def __init__(self, model: Callable[[], ErrorModel], *, seed: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self._model = model
        self._plausible: tuple[ErrorModel, dict[str, tuple[str, ...]]] | None = None
        self._draw = np.random.default_rng(seed)

    def plausible(self) -> dict[str, tuple[str, ...]]:
        model = self._model()
        if self._plausible is None or self._plausible[0] is not model:
            self._plausible = model, plausible_options(model)
        return self._plausible[1]

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution) -> object:
        allowed = self.plausible().get(param_name, ())
        choices = [c for c in param_distribution.choices if c in allowed] \
            if isinstance(param_distribution, CategoricalDistribution) else []
        if not choices:
            return super().sample_independent(study, trial, param_name, param_distribution)
        return choices[int(self._draw.integers(len(choices)))]


def make_sampler(cfg: SearchConfig, model: Callable[[], ErrorModel] | None = None) -> optuna.samplers.BaseSampler:
    """The configured sampler; NSGA-II draws from the plausible options of the error `model` (asked for when first
    needed) when it is given and `search.guided_mutation` is on. NSGA-II and TPE rank trials with a violated
    constraint (the Objective sets it: points lost beyond max_accuracy_drop) behind those that keep it."""
    if cfg.sampler == "nsga2":
        if model is not None and cfg.guided_mutation:
            return GuidedNSGAII(model, population_size=cfg.population_size, seed=cfg.seed)
        return NSGAIISampler(population_size=cfg.population_size, seed=cfg.seed)
    if cfg.sampler == "tpe":
        return TPESampler(seed=cfg.seed, multivariate=True, group=True, constant_liar=True)
    return RandomSampler(seed=cfg.seed)
