"""The plans a user would try by hand, tried first: the uniform plans (all float, all INT8 per channel and per
tensor, all INT8 per channel with each other range algorithm the space offers, every layer that may take a mode
in it), and "all INT8 but the k most sensitive layers float". The export must beat them: they are on the front."""

from __future__ import annotations

import numpy as np

from ...quantize import modes
from ...quantize.plan import FLOAT, LayerChoice, QuantPlan
from ..estimate.layer_errors import LayerErrors
from ..space import SearchSpace

Labelled = tuple[str, QuantPlan]


def uniform_plans(names: tuple[str, ...], space: SearchSpace) -> list[Labelled]:
    plans = [
        ("all-float", QuantPlan.uniform(names, FLOAT)),
        ("int8-per-channel", QuantPlan.uniform(names, LayerChoice(weight_granularity="per_channel"))),
        ("int8-per-tensor", QuantPlan.uniform(names, LayerChoice(weight_granularity="per_tensor"))),
    ]
    plans += [(f"int8-per-channel-{a}", QuantPlan.uniform(names, LayerChoice(activation_algorithm=a)))
              for a in sorted(space.algorithms()) if a != "minmax"]  # fmt: skip
    return plans + mode_plans(space)


def mode_plans(space: SearchSpace) -> list[Labelled]:
    """For each mode the space offers other than the default one, every layer that may take it in that mode and
    the others INT8 per channel: `quantize_dynamic`'s plan, the all-int4 one, …"""
    plans = []
    for mode in modes.modes():
        plan = space.mode_plan(mode.name) if mode.name != LayerChoice().mode else None
        if plan is not None:
            plans.append((mode.plan_label([c for _, c in plan.choices if c.quantize and c.mode == mode.name]), plan))
    return plans


def sensitive_plans(names: tuple[str, ...], errors: LayerErrors, ks: list[int]) -> list[Labelled]:
    """All INT8 per channel but the k most sensitive layers float, for each k of `search.sensitivity_k`."""
    plans = []
    for k in ks:
        if 0 < k < len(names):
            keep = set(sensitive_layers(names, errors, k))
            plans.append((f"sensitive-{k}-float", QuantPlan(tuple((n, FLOAT if n in keep else LayerChoice())
                                                                   for n in names))))  # fmt: skip
    return plans


def sensitive_layers(names: tuple[str, ...], errors: LayerErrors, k: int, choice: LayerChoice | None = None) -> list[str]:
    """The k layers whose error under `choice` (default: INT8 per channel, minmax) is largest (a layer the space
    does not offer it to counts as insensitive; one that cannot be quantized at all as the most sensitive)."""
    choice = choice or LayerChoice()
    if choice not in errors.choices:
        return []
    error = {n: float(np.nan_to_num(errors.of(n, choice), nan=0.0, posinf=np.finfo(float).max)) for n in names}
    return sorted(names, key=lambda n: -error[n])[:k]
