"""A study's Pareto front for people: pareto.csv and pareto.png."""

from __future__ import annotations

import csv
from pathlib import Path

from ..config import Cost
from ..search import ScoredPlan


def write_pareto_csv(front: list[ScoredPlan], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "label", "accuracy", "accuracy_drop", "bitops_fraction", "latency_ms", "latency_ratio",
                    "latency_rounds", "size_bytes", "quantized_layers", "plan_key"])
        for p in front:
            r = p.result
            w.writerow([p.number, p.label, f"{r.accuracy:.3f}", f"{r.accuracy_drop:.3f}", f"{r.bitops_fraction:.5f}",
                        f"{r.latency_ms:.3f}", f"{r.latency_ratio:.3f}", r.latency_rounds, r.size_bytes,
                        f"{len(p.plan.quantized)}/{len(p.plan.names)}", p.plan.key()])
    return path


def plot_pareto(points: list[ScoredPlan], front: list[ScoredPlan], chosen: ScoredPlan | None, objective: Cost,
                max_drop: float, fp32_accuracy: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter([objective.of(p.result) for p in points], [p.result.accuracy for p in points],
               s=14, c="0.7", label=f"trials ({len(points)})")
    ax.plot([objective.of(p.result) for p in front], [p.result.accuracy for p in front], "-o", c="tab:blue",
            ms=5, label="Pareto front")
    for p in points:
        if p.label:
            ax.scatter(objective.of(p.result), p.result.accuracy, marker="s", s=50, facecolors="none",
                       edgecolors="tab:green")
            ax.annotate(p.label, (objective.of(p.result), p.result.accuracy), fontsize=7, xytext=(4, -10),
                        textcoords="offset points", color="tab:green")
    ax.axhline(fp32_accuracy - max_drop, ls="--", c="tab:red", lw=1, label=f"FP32 - {max_drop:g} pt")
    if chosen is not None:
        ax.scatter(objective.of(chosen.result), chosen.result.accuracy, marker="*", s=260, c="tab:orange",
                   edgecolors="k", zorder=5, label=f"export (trial {chosen.number})")
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
