"""The plans a user would try by hand, tried first: the uniform plans (all float, and each mode's own: all INT8 per
channel and per tensor and with each other range algorithm the space offers, every layer that may take dynamic or
int4 in it, …), and "all INT8 but the k most sensitive layers float". The export must beat them: they are on the
front."""

from __future__ import annotations

import numpy as np

from ...quantize.plan import FLOAT, LayerChoice, QuantPlan
from ..estimate.layer_errors import LayerErrors
from ..space import SearchSpace
from .scheduler import Labelled


def uniform_plans(names: tuple[str, ...], space: SearchSpace) -> list[Labelled]:
    """All float, then every mode's hand-made uniform plans (SearchSpace.hand_made)."""
    return [("all-float", QuantPlan.uniform(names, FLOAT)), *space.hand_made()]


def sensitive_plans(names: tuple[str, ...], errors: LayerErrors, ks: list[int]) -> list[Labelled]:
    """All INT8 per channel but the k most sensitive layers float, for each k of `search.sensitivity_k`."""
    plans = []
    for k in ks:
        if 0 < k < len(names):
            keep = set(sensitive_layers(names, errors, k))
            plans.append((f"sensitive-{k}-float", QuantPlan(tuple((n, FLOAT if n in keep else LayerChoice.default())
                                                                   for n in names))))
    return plans


def sensitive_layers(names: tuple[str, ...], errors: LayerErrors, k: int, choice: LayerChoice | None = None) -> list[str]:
    """The k layers whose error under `choice` (default: INT8 per channel, minmax) is largest (a layer the space
    does not offer it to counts as insensitive; one that cannot be quantized at all as the most sensitive)."""
    choice = choice or LayerChoice.default()
    if choice not in errors.choices:
        return []
    error = {n: float(np.nan_to_num(errors.of(n, choice), nan=0.0, posinf=np.finfo(float).max)) for n in names}
    return sorted(names, key=lambda n: -error[n])[:k]
