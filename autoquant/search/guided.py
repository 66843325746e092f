"""Model-guided candidates: the per-layer, per-choice errors (layer_errors.py) as a first-order, additive
model of a plan's error (as HAWQ-V3, AIMET AMP and NNCF's accuracy control use one), turned into plans
across the cost range, enqueued before the sampler starts.

- every layer at the quantized option that adds the least error ("guided-int8"), and
- that plan with the k layers float whose error per FLOP is highest — the greedy answer to "which
  float layers buy the most accuracy for the fewest bitops" (a knapsack over bitops, solved greedily:
  a float layer costs FLOPs × (32·32 − 8·8) bitops and saves its error).
"""

from __future__ import annotations

import numpy as np

from ..quantize.plan import FLOAT, QuantPlan
from ..workspace import Workspace
from .layer_errors import LayerErrors
from .space import SearchSpace, decode

FLOAT_COUNTS = (1, 2, 3, 4, 6, 8, 12)


def least_error_plan(ws: Workspace, errors: LayerErrors, space: SearchSpace) -> QuantPlan:
    return QuantPlan(tuple(
        (layer.name, decode(errors.best(layer.name, layer.options)) if any(o != "float" for o in layer.options)
         else FLOAT)
        for layer in space.layers
    ))  # fmt: skip


def float_order(ws: Workspace, errors: LayerErrors, space: SearchSpace) -> list[str]:
    """Layers that may stay float, the best buys first: error of their best INT8 option per FLOP."""
    flops = {layer.name: max(layer.flops, 1) for layer in ws.graph.layers}
    candidates = [layer for layer in space.layers if "float" in layer.options and len(layer.options) > 1]
    return [layer.name for layer in sorted(candidates, key=lambda s: -errors.of(s.name, errors.best(s.name, s.options))
                                           / flops[s.name])]  # fmt: skip


def guided_plans(ws: Workspace, errors: LayerErrors, space: SearchSpace) -> list[tuple[str, QuantPlan]]:
    base = least_error_plan(ws, errors, space)
    order = float_order(ws, errors, space)
    plans = [("guided-int8", base)]
    for k in FLOAT_COUNTS:
        if k < len(order):
            keep = set(order[:k])
            plans.append((f"guided-{k}-float", QuantPlan(tuple((n, FLOAT if n in keep else c) for n, c in base.choices))))
    return plans


def sensitive_layers(ws: Workspace, errors: LayerErrors, k: int, option: str = "per_channel:minmax") -> list[str]:
    """The k layers whose error under `option` (the default choice) is largest (a layer the space does not
    offer it to counts as insensitive; one that cannot be quantized at all as the most sensitive)."""
    if option not in errors.options:
        return []
    error = {n: float(np.nan_to_num(errors.of(n, option), nan=0.0, posinf=np.finfo(float).max)) for n in ws.graph.names}
    return sorted(ws.graph.names, key=lambda n: -error[n])[:k]
