"""Pareto front of scored plans (accuracy up, cost down), the choice under a constraint, and its CSV/plot."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..config import Cost
from ..measure import Measurement
from ..quantize.plan import QuantPlan


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
        )  # fmt: skip
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


def choose(points: list[ScoredPlan], max_drop: float, objective: Cost,
           tied: frozenset[int] = frozenset()) -> tuple[ScoredPlan | None, bool]:  # fmt: skip
    """The cheapest quantized plan within `max_drop`; if none qualifies, (the quantized plan with the
    smallest drop, False). The all-float plan is the FP32 model: it is never exported as model.int8.onnx.
    `tied`: trials whose cost side-by-side timing could not tell apart from the cheapest's (retime_fastest);
    when the cheapest is one of them, they are equally cheap and the most accurate of them is chosen."""
    points = [p for p in points if p.plan.quantized]
    if not points:
        return None, False
    ok = [p for p in points if p.result.accuracy_drop <= max_drop + 1e-9]
    if ok:
        cheapest = min(ok, key=lambda p: (objective.of(p.result), -p.result.accuracy, p.number))
        if cheapest.number not in tied:
            return cheapest, True
        return max((p for p in ok if p.number in tied),
                   key=lambda p: (p.result.accuracy, -objective.of(p.result), -p.number)), True  # fmt: skip
    return min(points, key=lambda p: (p.result.accuracy_drop, objective.of(p.result))), False


def write_pareto_csv(front: list[ScoredPlan], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "label", "accuracy", "accuracy_drop", "bitops_fraction", "latency_ms", "latency_ratio",
                    "latency_rounds", "size_bytes", "quantized_layers", "plan_key"])  # fmt: skip
        for p in front:
            r = p.result
            w.writerow([p.number, p.label, f"{r.accuracy:.3f}", f"{r.accuracy_drop:.3f}", f"{r.bitops_fraction:.5f}",
                        f"{r.latency_ms:.3f}", f"{r.latency_ratio:.3f}", r.latency_rounds, r.size_bytes,
                        f"{len(p.plan.quantized)}/{len(p.plan.names)}", p.plan.key()])  # fmt: skip
    return path


def plot_pareto(points: list[ScoredPlan], front: list[ScoredPlan], chosen: ScoredPlan | None, objective: Cost,
                max_drop: float, fp32_accuracy: float, path: Path, title: str) -> Path:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter([objective.of(p.result) for p in points], [p.result.accuracy for p in points],
               s=14, c="0.7", label=f"trials ({len(points)})")  # fmt: skip
    ax.plot([objective.of(p.result) for p in front], [p.result.accuracy for p in front], "-o", c="tab:blue",
            ms=5, label="Pareto front")  # fmt: skip
    for p in points:
        if p.label:
            ax.scatter(objective.of(p.result), p.result.accuracy, marker="s", s=50, facecolors="none",
                       edgecolors="tab:green")  # fmt: skip
            ax.annotate(p.label, (objective.of(p.result), p.result.accuracy), fontsize=7, xytext=(4, -10),
                        textcoords="offset points", color="tab:green")  # fmt: skip
    ax.axhline(fp32_accuracy - max_drop, ls="--", c="tab:red", lw=1, label=f"FP32 - {max_drop:g} pt")
    if chosen is not None:
        ax.scatter(objective.of(chosen.result), chosen.result.accuracy, marker="*", s=260, c="tab:orange",
                   edgecolors="k", zorder=5, label=f"export (trial {chosen.number})")  # fmt: skip
    if objective.log_scale and points:  # an empty study (every trial failed) has nothing to put on a log axis
        ax.set_xscale("log")
    ax.set_xlabel(objective.label)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
