"""The error model: the per-layer, per-choice errors (layer_errors.py) as a first-order, additive model of a plan's
output error (as HAWQ-V3, AIMET AMP and NNCF's accuracy control use one), with the plan's cost from PlanCost
(cost.py) — and, as trials finish, its calibration against what they measured.

What it answers, for the proposers (search/propose/):
- `least_error()`: every layer at the quantized choice that adds the least error;
- `float_path(base, k)`: that plan with 1…k layers float, chosen greedily — each step keeps float the layer whose
  error saved per unit of cost added is highest (with a latency table the cost depends on the neighbours: a float
  layer next to a float one pays no transition between them, so each step re-prices against the plan so far);
- `at(λ)` / `sweep(n)`: the plans minimising error + λ · cost for a sweep of λ (the Lagrangian relaxation of
  "least error within a budget"; layer by layer with bitops, by dynamic programming over the layer forest with a
  latency table, where float layers come in contiguous runs that save transitions);
- `cheaper_neighbours(plan)`: the plans a move or two away that cost less (local search where the export is);
- `Calibration`: measured NMSE ≈ a · predicted, and the NMSE the accuracy limit allows, from the trials so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ...quantize.plan import FLOAT, LayerChoice, QuantPlan
from ..space import SearchSpace
from .cost import LatencyCost, PlanCost
from .layer_errors import LayerErrors


@dataclass(frozen=True)
class ErrorModel:
    """A plan's predicted output NMSE is the sum of its choices' errors in the per-layer table; its cost is the
    PlanCost's (bitops, or the latency table's prediction), as a share of all-float."""

    space: SearchSpace
    err: dict[tuple[str, LayerChoice], float]  # (layer, choice) → predicted output NMSE it adds (0 for float)
    cost: PlanCost

    @classmethod
    def build(cls, errors: LayerErrors, space: SearchSpace, cost: PlanCost) -> ErrorModel:
        err = {(s.name, c): float(np.nan_to_num(errors.of(s.name, c), nan=np.inf)) for s in space.layers for c in s.options}
        return cls(space, err, cost)

    def predict(self, plan: QuantPlan) -> float:
        """Predicted output NMSE of a plan of this space (inf if it takes a choice the space does not offer)."""
        return sum(self.err.get((s.name, plan[s.name]), np.inf) for s in self.space.layers)

    def plan_cost(self, plan: QuantPlan) -> float:
        return self.cost.plan(plan)

    def least_error(self) -> QuantPlan:
        """Every layer at its quantized choice with the least error (float where the space allows nothing else)."""

        def best(s) -> LayerChoice:
            quantized = [c for c in s.options if c.quantize]
            return min(quantized, key=lambda c: (self.err[s.name, c], quantized.index(c))) if quantized else FLOAT

        return QuantPlan(tuple((s.name, best(s)) for s in self.space.layers))

    def float_path(self, base: QuantPlan, steps: int) -> list[QuantPlan]:
        """`base` with 1, 2, … `steps` layers float, one added per step: the layer whose error saved per unit of
        cost added, priced against the plan so far, is highest (a layer whose float form adds no cost first)."""
        plan = base
        candidates = [s.name for s in self.space.layers if FLOAT in s.options and base[s.name].quantize]
        path, current = [], self.plan_cost(base)
        for _ in range(min(steps, len(candidates))):
            scored = []
            for name in candidates:
                extra = self.plan_cost(plan.with_choices({name: FLOAT})) - current
                saved = self.err[name, plan[name]]
                scored.append(((saved / extra if extra > 1e-12 else np.inf) if saved > 0 else 0.0, saved, name))
            pick = max(scored)[2]
            candidates.remove(pick)
            plan = plan.with_choices({pick: FLOAT})
            current = self.plan_cost(plan)
            path.append(plan)
        return path

    def at(self, lam: float) -> QuantPlan:
        """The plan minimising error + λ · cost. With bitops every layer's term is its own: the choice minimising
        it, layer by layer. With a latency table a float layer's transitions depend on its neighbours; the layers
        form a forest (each reads one producer layer), on which the exact minimum is a dynamic programme: each
        layer's best total for each of its choices, its consumers' best totals included, leaves first."""
        layers = self.space.layers

        def own(name: str, c: LayerChoice) -> float:
            return self.err[name, c] + lam * self.cost.layer(name, c)

        if not isinstance(self.cost, LatencyCost):
            return QuantPlan(tuple((s.name, min(s.options, key=lambda c: (own(s.name, c), s.options.index(c))))
                                   for s in layers))
        table = self.cost.table
        names = [s.name for s in layers]
        index = {n: i for i, n in enumerate(table.layers)}
        producer = {n: table.layers[table.producer[index[n]]] if table.producer[index[n]] >= 0 else None for n in names}
        children: dict[str, list[str]] = {n: [] for n in names}
        for n in names:
            if producer[n] in children:
                children[producer[n]].append(n)
        shares = {n: table.transition_shares(n) for n in names}
        options = {s.name: s.options for s in layers}

        def edge(parent: str, po: LayerChoice, child: str, co: LayerChoice) -> float:
            """Transition cost between a layer and one consumer: the consumer's input side when it is float
            after a quantized layer; the layer's output side (shared among its consumers) the other way."""
            if not co.quantize and po.quantize:
                return shares[child][0]
            if not po.quantize and co.quantize:
                return shares[parent][1] / len(children[parent])
            return 0.0

        best: dict[str, dict[LayerChoice, float]] = {}
        pick: dict[tuple[str, LayerChoice, str], LayerChoice] = {}  # (layer, choice, consumer) → the consumer's
        for n in reversed(names):  # consumers come after their producer in the graph's order
            best[n] = {}
            # An edge depends only on whether each side is quantized: per consumer, its best quantized and its
            # best float choice are the only ones a producer's choice can pick (the first in the space's order
            # on a tie, as a minimum over all of them would).
            kinds = {c: [min(xs, key=best[c].get) for q in (True, False) if (xs := [x for x in best[c] if x.quantize == q])]
                     for c in children[n]}
            for o in options[n]:
                total = own(n, o)
                for c in children[n]:
                    co = min(kinds[c], key=lambda x: (best[c][x] + lam * edge(n, o, c, x), options[c].index(x)))
                    pick[n, o, c] = co
                    total += best[c][co] + lam * edge(n, o, c, co)
                best[n][o] = total
        chosen: dict[str, LayerChoice] = {}
        for n in names:  # a root at its best; each consumer as its producer's choice decides
            if n not in chosen:
                chosen[n] = min(best[n], key=best[n].get)
            for c in children[n]:
                chosen[c] = pick[n, chosen[n], c]
        return QuantPlan(tuple((n, chosen[n]) for n in names))

    def sweep(self, count: int) -> list[QuantPlan]:
        """Distinct plans for λ spread (log scale) between "any saving is worth its error" and "no error is worth
        a saving", cheapest last."""
        finite = [e for e in self.err.values() if 0 < e < np.inf]
        if not finite:
            return []
        plans = {}
        for lam in np.geomspace(min(finite) / 10, max(finite) * 1e3, count):
            plan = self.at(lam)
            plans.setdefault(plan.key(), plan)
        return list(plans.values())

    def candidates(self, sweep: int) -> list[QuantPlan]:
        """The plans a proposer chooses among: the least-error plan, the λ sweep (`sweep` values) and the whole float
        path from the least-error plan to all-float, distinct. A latency-priced model adds the bitops-priced
        sweep and path: the transitions a float layer pays next to quantized ones make the latency optimum jump
        between a few plans (13 distinct of 64 λ on the quickstart model), and between them a limit can fall where
        no candidate is. Kept on the model: the proposers ask for them again and again."""
        kept = self.__dict__.setdefault("_kept_candidates", {})  # a frozen dataclass's own dict: a memo, not a field
        if sweep not in kept:
            kept[sweep] = self._candidates(sweep)
        return kept[sweep]

    def _candidates(self, sweep: int) -> list[QuantPlan]:
        models = [self] + ([replace(self, cost=self.cost.bitops)] if isinstance(self.cost, LatencyCost) else [])
        plans = [self.least_error()] + [p for m in models for p in m.sweep(sweep) + m.float_path(m.least_error(), len(self.space.layers))]
        return list(dict.fromkeys(plans))

    def cheaper_neighbours(self, plan: QuantPlan) -> list[QuantPlan]:
        """The plans one or two layer moves away from `plan` that cost less: one layer a step down in bits (its
        least-error choice with fewer: a float layer back to its best INT8 choice, an INT8 one to int4 where the
        space has it), alone or with another layer a step up (its least-error choice among those with the next
        larger bit count: INT8 to float, int4 to INT8) — e.g. a float layer swapped for a cheaper one, a move
        neither the greedy path nor the λ sweep makes. Steps are in bits, not in cost: with a latency table a
        layer's own share says nothing of the transitions a move adds or saves, which only the whole plan's
        price counts."""
        options = {s.name: s.options for s in self.space.layers if (s.name, plan[s.name]) in self.err}

        def bits(c: LayerChoice) -> int:
            return int(np.prod(c.cost_bits))

        def step(name: str, down: bool) -> LayerChoice | None:
            own = bits(plan[name])
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
                neighbour = plan.with_choices(moves)
                if self.plan_cost(neighbour) < budget:
                    out.setdefault(neighbour.key(), neighbour)
        return list(out.values())

    def cheapest_within(self, budget: float, plans: list[QuantPlan]) -> QuantPlan | None:
        """Of `plans` (e.g. a λ sweep), the cheapest whose predicted error is at most `budget`."""
        ok = [p for p in plans if self.predict(p) <= budget]
        return min(ok, key=lambda p: (self.plan_cost(p), self.predict(p)), default=None)


@dataclass(frozen=True)
class Measured:
    """A quantized trial as the calibration reads it."""

    plan: QuantPlan
    nmse: float  # its output NMSE against FP32 (Measurement.output_mse)
    drop: float  # its accuracy drop


@dataclass(frozen=True)
class Calibration:
    """The model against the trials so far: measured NMSE ≈ `scale` · predicted (the geometric mean of their
    ratio), and `allowed`, the NMSE the accuracy limit allows — the geometric middle between the largest NMSE of
    a trial that met the limit and the smallest NMSE of one that broke it above that (twice the largest while
    none broke it; half the smallest while none met it)."""

    trials: tuple[Measured, ...]
    scale: float | None
    allowed: float | None

    @classmethod
    def of(cls, model: ErrorModel, trials: list[Measured], max_drop: float) -> Calibration:
        ratios = [t.nmse / p for t in trials if 0 < (p := model.predict(t.plan)) < math.inf]
        scale = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None
        return cls(tuple(trials), scale, allowed_error([(t.nmse, t.drop) for t in trials], max_drop))

    def feasible(self, max_drop: float) -> list[Measured]:
        return [t for t in self.trials if t.drop <= max_drop]


def allowed_error(points: list[tuple[float, float]], max_drop: float) -> float | None:
    """The NMSE the limit allows, from (measured NMSE, drop) of quantized trials."""
    ok = [mse for mse, drop in points if drop <= max_drop]
    if not ok:
        return 0.5 * min(mse for mse, _ in points) if points else None
    best_ok = max(ok)
    above = [mse for mse, drop in points if drop > max_drop and mse > best_ok]
    return math.sqrt(best_ok * min(above)) if above else 2.0 * best_ok
