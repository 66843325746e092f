"""Model-guided candidates: the per-layer, per-choice errors (layer_errors.py) as a first-order, additive
model of a plan's error (as HAWQ-V3, AIMET AMP and NNCF's accuracy control use one), turned into plans
across the cost range, enqueued before the sampler starts.

- every layer at the quantized option that adds the least error ("guided-int8"), and
- that plan with the k layers float whose error per FLOP is highest — the greedy answer to "which
  float layers buy the most accuracy for the fewest bitops" (a knapsack over bitops, solved greedily:
  a float layer costs FLOPs × (32·32 − 8·8) bitops and saves its error), and
- across the cost range, the plans that minimise error + λ · bitops layer by layer for a sweep of λ
  (the Lagrangian relaxation of "least error within a bitops budget"): with several modes and bit widths
  per layer, the cheap options (int4) enter where their error is small for their savings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quantize.plan import FLOAT, QuantPlan
from ..workspace import Workspace
from .latency_table import LatencyTable
from .layer_errors import LayerErrors
from .space import SearchSpace, decode, encode

FLOAT_COUNTS = (1, 2, 3, 4, 6, 8, 12)


def least_error_plan(ws: Workspace, errors: LayerErrors, space: SearchSpace) -> QuantPlan:
    return QuantPlan(tuple(
        (layer.name, decode(errors.best(layer.name, layer.options)) if any(o != "float" for o in layer.options)
         else FLOAT)
        for layer in space.layers
    ))  # fmt: skip


def float_order(model: ErrorModel, errors: LayerErrors) -> list[str]:
    """Layers that may stay float, the best buys first: error of their best INT8 option per unit of cost
    that keeping them float adds (bitops: their FLOPs; latency: their float kernels and transitions)."""
    candidates = [layer for layer in model.space.layers if "float" in layer.options and len(layer.options) > 1]

    def value(s) -> float:
        best = errors.best(s.name, s.options)
        extra = model.cost[s.name, "float"] - model.cost[s.name, best]
        return errors.of(s.name, best) / max(extra, 1e-12)

    return [layer.name for layer in sorted(candidates, key=lambda s: -value(s))]


@dataclass(frozen=True)
class ErrorModel:
    """The additive model of a plan: its predicted output error is the sum of its options' errors in the
    per-layer table, its bitops share the sum of theirs."""

    space: SearchSpace
    err: dict[tuple[str, str], float]  # (layer, option) → predicted output NMSE it adds (0 for float)
    cost: dict[tuple[str, str], float]  # (layer, option) → its share of all-FP32 bitops

    @classmethod
    def build(cls, ws: Workspace, errors: LayerErrors, space: SearchSpace, latency: LatencyTable | None = None) -> ErrorModel:
        """Cost in bitops, or with a latency table in its milliseconds (a float layer priced with both its
        transitions, as between INT8 neighbours), as a share of all-float either way."""
        flops = {layer.name: max(layer.flops, 1) for layer in ws.graph.layers}
        total = sum(flops.values()) * 32 * 32
        cost = {(s.name, o): flops[s.name] * float(np.prod(decode(o).cost_bits)) / total
                for s in space.layers for o in s.options}  # fmt: skip
        if latency is not None:
            cost = {(n, o): latency.share(n, decode(o), fallback=c) for (n, o), c in cost.items()}
        err = {(s.name, o): float(np.nan_to_num(errors.of(s.name, o), nan=np.inf)) if o != "float" else 0.0
               for s in space.layers for o in s.options}  # fmt: skip
        return cls(space, err, cost)

    def predict(self, plan: QuantPlan) -> float:
        """Predicted output NMSE of a plan of this space (inf if it takes an option the space does not offer)."""
        return sum(self.err.get((s.name, encode(plan[s.name])), np.inf) for s in self.space.layers)

    def at(self, lam: float) -> QuantPlan:
        """Per layer the option minimising error + λ · bitops share (the Lagrangian relaxation of "least
        error within a bitops budget")."""
        return QuantPlan(tuple(
            (s.name, decode(min(s.options, key=lambda o: (self.err[s.name, o] + lam * self.cost[s.name, o], s.options.index(o)))))
            for s in self.space.layers
        ))  # fmt: skip

    def sweep(self, count: int) -> list[QuantPlan]:
        """Distinct plans for λ spread (log scale) between "any saving is worth its error" and "no error is
        worth a saving", cheapest last."""
        finite = [e for e in self.err.values() if 0 < e < np.inf]
        if not finite:
            return []
        plans = {}
        for lam in np.geomspace(min(finite) / 10, max(finite) * 1e3, count):
            plan = self.at(lam)
            plans.setdefault(plan.key(), plan)
        return list(plans.values())

    def cheapest_within(self, budget: float, plans: list[QuantPlan]) -> QuantPlan | None:
        """Of `plans` (e.g. a λ sweep), the one with the fewest bitops whose predicted error is at most `budget`."""
        ok = [p for p in plans if self.predict(p) <= budget]
        return min(ok, key=lambda p: (sum(self.cost[n, encode(c)] for n, c in p.choices), self.predict(p)), default=None)


def guided_plans(ws: Workspace, errors: LayerErrors, space: SearchSpace,
                 latency: LatencyTable | None = None) -> list[tuple[str, QuantPlan]]:  # fmt: skip
    model = ErrorModel.build(ws, errors, space, latency)
    base = least_error_plan(ws, errors, space)
    order = float_order(model, errors)
    plans = [("guided-int8", base)]
    for k in FLOAT_COUNTS:
        if k < len(order):
            keep = set(order[:k])
            plans.append((f"guided-{k}-float", QuantPlan(tuple((n, FLOAT if n in keep else c) for n, c in base.choices))))
    known = {p.key() for _, p in plans}
    # across the cost range, the error model's λ sweep (with several modes and bit widths per layer, the
    # cheap options, e.g. int4, enter where their error is small for their savings)
    budget = [(f"guided-budget-{i}", p) for i, p in enumerate(model.sweep(8))]
    return plans + [(label, p) for label, p in budget if p.key() not in known]


def sensitive_layers(ws: Workspace, errors: LayerErrors, k: int, option: str = "per_channel:minmax") -> list[str]:
    """The k layers whose error under `option` (the default choice) is largest (a layer the space does not
    offer it to counts as insensitive; one that cannot be quantized at all as the most sensitive)."""
    if option not in errors.options:
        return []
    error = {n: float(np.nan_to_num(errors.of(n, option), nan=0.0, posinf=np.finfo(float).max)) for n in ws.graph.names}
    return sorted(ws.graph.names, key=lambda n: -error[n])[:k]
