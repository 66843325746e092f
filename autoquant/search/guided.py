"""Model-guided candidates: the per-layer, per-choice errors (layer_errors.py) as a first-order, additive
model of a plan's error (as HAWQ-V3, AIMET AMP and NNCF's accuracy control use one), turned into plans
across the cost range, enqueued before the sampler starts.

- every layer at the quantized option that adds the least error ("guided-int8"), and
- that plan with k layers float, chosen greedily one at a time: each step keeps float the layer whose
  error saved per unit of cost added is highest — the greedy answer to "which float layers buy the most
  accuracy for the least cost". With bitops the cost of a float layer is its own (FLOPs × (32·32 − 8·8));
  with a latency table it depends on its neighbours (a float layer next to a float one pays no transition
  between them), so each step re-prices the candidates against the plan so far, and
- across the cost range, the plans that minimise error + λ · cost for a sweep of λ (the Lagrangian
  relaxation of "least error within a budget"; layer by layer with bitops, by dynamic programming over
  the layer forest with a latency table): with several modes and bit widths per layer, the cheap
  options (int4) enter where their error is small for their savings; with latency, float layers come in
  contiguous runs where that saves transitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quantize.modes import decode, encode
from ..quantize.plan import FLOAT, QuantPlan
from ..workspace import Workspace
from .latency_table import LatencyTable
from .layer_errors import LayerErrors
from .space import SearchSpace

FLOAT_COUNTS = (1, 2, 3, 4, 6, 8, 12)


@dataclass(frozen=True)
class ErrorModel:
    """The additive model of a plan: its predicted output error is the sum of its options' errors in the
    per-layer table; its cost the sum of their bitops shares, or with a latency table the table's
    prediction for the plan as a share of all-float."""

    space: SearchSpace
    err: dict[tuple[str, str], float]  # (layer, option) → predicted output NMSE it adds (0 for float)
    cost: dict[tuple[str, str], float]  # (layer, option) → its share of all-float (its own kernels)
    latency: LatencyTable | None = None

    @classmethod
    def build(cls, ws: Workspace, errors: LayerErrors, space: SearchSpace, latency: LatencyTable | None = None) -> ErrorModel:
        flops = {layer.name: max(layer.flops, 1) for layer in ws.graph.layers}
        total = sum(flops.values()) * 32 * 32
        cost = {(s.name, o): flops[s.name] * float(np.prod(decode(o).cost_bits)) / total
                for s in space.layers for o in s.options}  # fmt: skip
        if latency is not None:
            cost = {(n, o): latency.share(n, decode(o), fallback=c) for (n, o), c in cost.items()}
        err = {(s.name, o): float(np.nan_to_num(errors.of(s.name, o), nan=np.inf)) if o != "float" else 0.0
               for s in space.layers for o in s.options}  # fmt: skip
        return cls(space, err, cost, latency)

    def predict(self, plan: QuantPlan) -> float:
        """Predicted output NMSE of a plan of this space (inf if it takes an option the space does not offer)."""
        by_name = dict(plan.choices)
        return sum(self.err.get((s.name, encode(by_name[s.name])), np.inf) for s in self.space.layers)

    def plan_cost(self, plan: QuantPlan) -> float:
        if self.latency is not None:
            return self.latency.predict(plan) / self.latency.all_float_ms
        by_name = dict(plan.choices)
        return sum(self.cost[s.name, encode(by_name[s.name])] for s in self.space.layers)

    def least_error(self) -> QuantPlan:
        """Every layer at its quantized option with the least error (float where the space allows nothing else)."""
        def best(s) -> str:
            quantized = [o for o in s.options if o != "float"]
            return min(quantized, key=lambda o: (self.err[s.name, o], quantized.index(o))) if quantized else "float"

        return QuantPlan(tuple((s.name, decode(best(s))) for s in self.space.layers))

    def float_path(self, base: QuantPlan, steps: int) -> list[QuantPlan]:
        """`base` with 1, 2, … `steps` layers float, one added per step: the layer whose error saved per
        unit of cost added, priced against the plan so far, is highest (a layer whose float form adds no
        cost — e.g. next to a float neighbour — first)."""
        plan = base
        candidates = [s.name for s in self.space.layers if "float" in s.options and base[s.name].quantize]
        path, current = [], self.plan_cost(base)
        for _ in range(min(steps, len(candidates))):
            scored = []
            for name in candidates:
                extra = self.plan_cost(plan.with_choices({name: FLOAT})) - current
                saved = self.err[name, encode(plan[name])]
                scored.append(((saved / extra if extra > 1e-12 else np.inf) if saved > 0 else 0.0, saved, name))
            pick = max(scored)[2]
            candidates.remove(pick)
            plan = plan.with_choices({pick: FLOAT})
            current = self.plan_cost(plan)
            path.append(plan)
        return path

    def at(self, lam: float) -> QuantPlan:
        """The plan minimising error + λ · cost (the Lagrangian relaxation of "least error within a
        budget"). With bitops every layer's term is its own: the option minimising it, layer by layer. With
        a latency table a float layer's transitions depend on its neighbours; the layers form a forest (each
        reads one producer layer), on which the exact minimum is a dynamic programme: each layer's best
        total for each of its options, its consumers' best totals included, leaves first."""
        layers = self.space.layers
        names = [s.name for s in layers]
        if self.latency is None:
            return QuantPlan(tuple(
                (s.name, decode(min(s.options, key=lambda o: (self.err[s.name, o] + lam * self.cost[s.name, o], s.options.index(o)))))
                for s in layers
            ))  # fmt: skip
        index = {n: i for i, n in enumerate(self.latency.layers)}
        producer = {n: self.latency.layers[self.latency.producer[index[n]]] if self.latency.producer[index[n]] >= 0 else None
                    for n in names}  # fmt: skip
        children: dict[str, list[str]] = {n: [] for n in names}
        for n in names:
            if producer[n] in children:
                children[producer[n]].append(n)
        shares = {n: self.latency.transition_shares(n) for n in names}
        options = {s.name: s.options for s in layers}

        def edge(parent: str, po: str, child: str, co: str) -> float:
            """Transition cost between a layer and one consumer: the consumer's input side when it is float
            after an INT8 layer; the layer's output side (shared among its consumers) the other way."""
            if co == "float" and po != "float":
                return shares[child][0]
            if po == "float" and co != "float":
                return shares[parent][1] / len(children[parent])
            return 0.0

        best: dict[str, dict[str, float]] = {}
        pick: dict[tuple[str, str, str], str] = {}  # (layer, option, consumer) → the consumer's option
        for n in reversed(names):  # consumers come after their producer in the graph's order
            best[n] = {}
            for o in options[n]:
                total = self.err[n, o] + lam * self.cost[n, o]
                for c in children[n]:
                    co = min(best[c], key=lambda x: best[c][x] + lam * edge(n, o, c, x))
                    pick[n, o, c] = co
                    total += best[c][co] + lam * edge(n, o, c, co)
                best[n][o] = total
        chosen: dict[str, str] = {}
        for n in names:  # a root at its best; each consumer as its producer's option decides
            if n not in chosen:
                chosen[n] = min(best[n], key=best[n].get)
            for c in children[n]:
                chosen[c] = pick[n, chosen[n], c]
        return QuantPlan(tuple((n, decode(chosen[n])) for n in names))

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

    def cheaper_neighbours(self, plan: QuantPlan) -> list[QuantPlan]:
        """The plans one or two layer moves away from `plan` that cost less (plan_cost): one layer a step
        down in bits (its least-error option with fewer: a float layer back to its best INT8 option, an
        INT8 one to int4 where the space has it), alone or with another layer a step up (its least-error
        option among those with the next larger bit count: INT8 to float, int4 to INT8) — e.g. a float
        layer swapped for a cheaper one, a move neither the greedy path nor the λ sweep makes. Steps are in
        bits, not in `cost`: with a latency table a layer's own share says nothing of the transitions a
        move adds or saves, which only the whole plan's price counts."""
        current = {n: encode(c) for n, c in plan.choices}
        options = {s.name: s.options for s in self.space.layers if (s.name, current[s.name]) in self.err}

        def bits(option: str) -> int:
            return int(np.prod(decode(option).cost_bits))

        def step(name: str, down: bool) -> str | None:
            own = bits(current[name])
            moves = [x for x in options[name] if (bits(x) < own if down else bits(x) > own)]
            if not down:
                moves = [x for x in moves if bits(x) == min(map(bits, moves))]
            return min(moves, key=lambda x: (self.err[name, x], options[name].index(x)), default=None)

        downs = {n: d for n in options if (d := step(n, True)) is not None}
        ups = {n: u for n in options if (u := step(n, False)) is not None}
        budget = self.plan_cost(plan)
        out = {}
        for n, d in downs.items():
            for moves in [{n: d}] + [{n: d, m: u} for m, u in ups.items() if m != n]:
                neighbour = plan.with_choices({k: decode(o) for k, o in moves.items()})
                if self.plan_cost(neighbour) < budget:
                    out.setdefault(neighbour.key(), neighbour)
        return list(out.values())

    def cheapest_within(self, budget: float, plans: list[QuantPlan]) -> QuantPlan | None:
        """Of `plans` (e.g. a λ sweep), the cheapest whose predicted error is at most `budget`."""
        ok = [p for p in plans if self.predict(p) <= budget]
        return min(ok, key=lambda p: (self.plan_cost(p), self.predict(p)), default=None)


def guided_plans(ws: Workspace, errors: LayerErrors, space: SearchSpace,
                 latency: LatencyTable | None = None) -> list[tuple[str, QuantPlan]]:  # fmt: skip
    model = ErrorModel.build(ws, errors, space, latency)
    base = model.least_error()
    path = model.float_path(base, max(FLOAT_COUNTS))
    plans = [("guided-int8", base)] + [(f"guided-{k}-float", path[k - 1]) for k in FLOAT_COUNTS if k <= len(path)]
    known = {p.key() for _, p in plans}
    budget = [(f"guided-budget-{i}", p) for i, p in enumerate(model.sweep(16))]
    return plans + [(label, p) for label, p in budget if p.key() not in known]


def sensitive_layers(ws: Workspace, errors: LayerErrors, k: int, option: str = "per_channel:minmax") -> list[str]:
    """The k layers whose error under `option` (the default choice) is largest (a layer the space does not
    offer it to counts as insensitive; one that cannot be quantized at all as the most sensitive)."""
    if option not in errors.options:
        return []
    error = {n: float(np.nan_to_num(errors.of(n, option), nan=0.0, posinf=np.finfo(float).max)) for n in ws.graph.names}
    return sorted(ws.graph.names, key=lambda n: -error[n])[:k]
