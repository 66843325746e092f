"""Choosing the export: the scored plans of a study, their Pareto front (accuracy up, cost down), its hypervolume,
latency re-timed side by side where the choice depends on it, and the choice under the accuracy limit."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.trial import TrialState

from ..config import Cost
from ..evaluate.latency import not_slower
from ..measure import Measurement, Meter, paired_figures
from ..quantize.plan import QuantPlan
from ..workspace import Workspace
from . import trial_attrs as attrs

if TYPE_CHECKING:
    from .confirm import Confirmation


@dataclass(frozen=True)
class ScoredPlan:
    number: int  # Optuna trial number
    label: str  # warm-start name, or "" for sampled plans
    plan: QuantPlan
    result: Measurement


def pareto_front(points: list[ScoredPlan], objective: Cost) -> list[ScoredPlan]:
    """Non-dominated points, cheapest first. Written here rather than read from `study.best_trials`
    because `export` may re-choose under a different cost than the one the study optimised."""
    front = []
    for p in points:
        dominated = any(
            q.result.accuracy >= p.result.accuracy and objective.of(q.result) <= objective.of(p.result)
            and (q.result.accuracy > p.result.accuracy or objective.of(q.result) < objective.of(p.result))
            for q in points
        )
        if not dominated:
            front.append(p)
    unique = {(p.result.accuracy, objective.of(p.result)): p for p in sorted(front, key=lambda p: -p.number)}
    return sorted(unique.values(), key=lambda p: objective.of(p.result))


def hypervolume(points: list[tuple[float, float]], ref_cost: float, ref_drop: float) -> float:
    """Area dominated by (cost, accuracy drop) points, both minimised, up to the reference point. Optuna's
    hypervolume is private and N-dimensional; in 2-D a sort and one sweep is exact."""
    pts = sorted((c, d) for c, d in points if c < ref_cost and d < ref_drop)
    area, best = 0.0, ref_drop
    for i, (cost, drop) in enumerate(pts):
        best = min(best, drop)
        area += ((pts[i + 1][0] if i + 1 < len(pts) else ref_cost) - cost) * (ref_drop - best)
    return area


def slower_than_fp32(p: ScoredPlan) -> bool:
    """Whether the plan ran slower than FP32 timed beside it (its paired ratio)."""
    return p.result.latency_ratio >= 1.0


def within(p: ScoredPlan, max_drop: float, objective: Cost) -> bool:
    """A quantized plan within the limit that the export may be. Under objective latency it must also run faster
    than FP32 here (an INT8 model is asked for to go faster); under bitops or size the user targets another
    machine's cost, so this CPU's timing does not veto it (the record notes it)."""
    return (p.plan.quantized and p.result.accuracy_drop <= max_drop + 1e-9
            and not (objective is Cost.LATENCY and slower_than_fp32(p)))


def choose(points: list[ScoredPlan], max_drop: float, objective: Cost,
           tied: frozenset[int] = frozenset()) -> tuple[ScoredPlan | None, bool]:
    """The export: the fastest quantized plan within `max_drop`, in paired latency — the product's question is
    the fastest model within the limit, whatever cost ranked the search. `tied`: trials that side-by-side rounds
    could not tell apart from the fastest (retime_fastest); among them, the cheapest in the objective (under
    objective latency, the most accurate). Plans without a latency figure count only when none has one (then the
    cheapest in the objective). Under latency a plan slower than FP32 is not a candidate. If no plan qualifies: (the quantized
    plan with the smallest drop, False). The all-float plan is the FP32 model: it is never exported as
    model.int8.onnx."""
    points = [p for p in points if p.plan.quantized]
    if not points:
        return None, False
    ok = [p for p in points if within(p, max_drop, objective)]
    if not ok:
        return min(points, key=lambda p: (p.result.accuracy_drop, objective.of(p.result))), False

    def tie_break(p: ScoredPlan) -> tuple:
        first = -p.result.accuracy if objective is Cost.LATENCY else objective.of(p.result)
        return first, -p.result.accuracy, p.number

    timed = [p for p in ok if math.isfinite(p.result.latency_ratio)]
    if not timed:
        return min(ok, key=tie_break), True
    fastest = min(timed, key=lambda p: (p.result.latency_ratio, -p.result.accuracy, p.number))
    equal = [p for p in timed if p.number in tied] if fastest.number in tied else [fastest]
    return min(equal, key=tie_break), True


def scored_points(study: optuna.Study) -> list[ScoredPlan]:
    """Complete trials with their results; latency timed after the study (time_points) filled in."""
    timed = attrs.timed_after(study)
    points = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        result = attrs.result(t)
        if t.number in timed:  # timed again after the study: the later, side-by-side figure wins
            ms, ratio, rounds = timed[t.number]
            result = replace(result, latency_ms=ms, latency_ratio=ratio, latency_rounds=rounds)
        points.append(ScoredPlan(t.number, attrs.label(t), attrs.plan(t), result))
    return points


# A trial's figure moves against side-by-side re-timing (benchmarks/latency_trust.py): a plan more than this much
# slower than the fastest is not a candidate for the export; at most RETIME_MAX are re-timed together.
RETIME_BAND, RETIME_MAX = 1.15, 5
# Under bitops or size, the plans within the limit timed after the study: the front's, and this many more that the
# latency table predicts fastest (the fastest plan is often not on a bitops front: transitions cost no bitops).
SHORTLIST = 8


def fastest_within(points: list[ScoredPlan], max_drop: float, objective: Cost) -> list[ScoredPlan]:
    """The timed quantized plans within the limit that the export may be (within()), fastest first."""
    return sorted((p for p in points if within(p, max_drop, objective) and math.isfinite(p.result.latency_ratio)),
                  key=lambda p: p.result.latency_ratio)


def retime_fastest(ws: Workspace, study: optuna.Study, points: list[ScoredPlan], max_drop: float,
                   objective: Cost) -> tuple[list[ScoredPlan], frozenset[int]]:
    """The export is the fastest plan that meets the constraint, but each plan was timed at its own moment (or in
    its own group), and the least of many noisy figures is biased low. The plans that meet it within RETIME_BAND
    of the fastest figure are timed again, together and interleaved with FP32 in the same rounds, and those
    figures replace theirs (stored on the study). Also returned: the trial numbers of the plans these rounds
    cannot tell apart from the fastest (evaluate/latency.py: not_slower), which choose() treats as equally fast."""
    ok = fastest_within(points, max_drop, objective)
    band = [p for p in ok if p.result.latency_ratio <= ok[0].result.latency_ratio * RETIME_BAND][:RETIME_MAX] if ok else []
    if len(band) < 2:
        return points, frozenset()
    rounds = Meter(ws).paired_rounds([ws.build(p.plan).SerializeToString() for p in band])
    figures = paired_figures(rounds)
    fastest = int(np.argmin([ms for ms, _, _ in figures]))
    tied = frozenset(p.number for i, p in enumerate(band) if not_slower(rounds, i, fastest))
    return _with_timed(study, points, {p.number: f for p, f in zip(band, figures)}), tied


# Plans timed after the study share their rounds and FP32 runs, this many at a time (each holds a session).
TIME_TOGETHER = 6


def time_points(ws: Workspace, study: optuna.Study, points: list[ScoredPlan], which: list[ScoredPlan]) -> list[ScoredPlan]:
    """`points` with paired latency (interleaved with FP32) for those of `which` that were not timed as trials
    (a study that minimises bitops or size times only its front); stored on the study for later exports."""
    todo = list({p.number: p for p in which if math.isnan(p.result.latency_ratio)}.values())
    if not todo:
        return points
    meter, timed = Meter(ws), {}
    for i in range(0, len(todo), TIME_TOGETHER):
        group = todo[i : i + TIME_TOGETHER]
        models = [ws.build(p.plan).SerializeToString() for p in group]
        timed |= dict(zip((p.number for p in group), meter.latencies(models)))
    return _with_timed(study, points, timed)


def _with_timed(study: optuna.Study, points: list[ScoredPlan], timed: dict[int, tuple[float, float, int]]) -> list[ScoredPlan]:
    """Store latencies (ms, ratio, rounds) measured after the study and put them into `points`."""
    attrs.add_timed_after(study, timed)
    return [replace(p, result=replace(p.result, latency_ms=timed[p.number][0], latency_ratio=timed[p.number][1],
                                      latency_rounds=timed[p.number][2]))
            if p.number in timed else p for p in points]


@dataclass(frozen=True)
class Selection:
    points: list[ScoredPlan]  # every complete trial, latency timed after the study filled in
    front: list[ScoredPlan]
    chosen: ScoredPlan | None
    met: bool  # whether `chosen` is within the limit (and, where there is a confirmation split, confirmed)
    fastest: list[ScoredPlan]  # the timed quantized plans within the limit, fastest first
    tied: frozenset[int] = frozenset()  # the trials side-by-side rounds could not tell apart from the fastest
    confirmation: Confirmation | None = None  # the export's drop on the confirmation split (search/confirm.py)
    refused: tuple[Confirmation, ...] = ()  # candidates before it whose drop did not hold there
    slower: tuple[ScoredPlan, ...] = ()  # plans within the limit that ran slower than FP32 beside it (never exported)


def select(ws: Workspace, study: optuna.Study, max_drop: float, objective: Cost,
           predicted: Callable[[QuantPlan], float] | None = None) -> Selection:
    """The study's front and export under `max_drop`: the plans that could be the export are timed (under latency
    every trial already is; otherwise the front's plans within the limit and the SHORTLIST that `predicted` — the
    latency table's price — says are fastest), the fastest again side by side (retime_fastest), and choose() takes
    the fastest; the front, in the objective's cost, is timed for the table."""
    points = scored_points(study)
    feasible = [p for p in points if p.plan.quantized and p.result.accuracy_drop <= max_drop]
    shortlist = pareto_front(feasible, objective)
    if predicted is not None:
        shortlist += sorted(feasible, key=lambda p: predicted(p.plan))[:SHORTLIST]
    points = time_points(ws, study, points, points if objective is Cost.LATENCY else shortlist)
    points, tied = retime_fastest(ws, study, points, max_drop, objective)
    front = pareto_front(points, objective)
    points = time_points(ws, study, points, front)
    front = pareto_front(points, objective)
    chosen, met = choose(points, max_drop, objective, tied)
    slower = () if objective is not Cost.LATENCY else tuple(sorted(
        (p for p in points if p.plan.quantized and p.result.accuracy_drop <= max_drop + 1e-9 and slower_than_fp32(p)),
        key=lambda p: p.result.latency_ratio))
    return Selection(points, front, chosen, met, fastest_within(points, max_drop, objective), tied, slower=slower)
