"""`autoquant report DIR [DIR ...]`: studies side by side in one markdown page with one figure —
Pareto fronts overlaid, the best plan per accuracy constraint, and the per-layer choices of those
plans as a heat map. Reads the studies' storages only; builds no model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Cost, load_experiment
from ..errors import ConfigError
from ..fileio import atomic_write_bytes
from ..search import RunPaths, ScoredPlan, choose, pareto_front, scored_points

CONSTRAINTS = (0.25, 0.5, 1.0, 2.0)
# Heat-map colour per layer choice: float, then INT8 per-tensor / per-channel, then 4-bit.
PALETTE = ("#d9d9d9", "#2c7bb6", "#fdae61", "#7b3294", "#1a9641", "#d7191c", "#a6611a", "#80cdc1")


def category(choice) -> str:
    """How a layer runs, as the heat map colours it: its label (float, int8, dynamic, int4, …) and granularity."""
    granularity = choice.fields().get("weight_granularity")
    return choice.label + (f" {granularity.replace('_', '-')}" if granularity else "")


def load_run(run_dir: Path) -> tuple[str, float, list[ScoredPlan]]:
    paths = RunPaths(Path(run_dir))
    exp = load_experiment(paths.experiment())
    study = paths.study(exp)
    points = scored_points(study)
    if not points:
        raise ConfigError(f"the study in {run_dir} has no complete trial yet")
    fp32 = points[0].result.accuracy + points[0].result.accuracy_drop
    return f"{exp.name} ({Path(run_dir).name})", fp32, points


MARKER = ".autoquant-report"
FILES = ("report.md", "report.png")


def claim_report_dir(out_dir: Path, files: tuple[str, ...]) -> None:
    """A report writes its own files into `out_dir` (a folder of the user's may hold others), and replaces them only
    where an earlier report wrote them (the marker says so): a report.md of the user's is never overwritten."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"report target {out_dir} is a file: give a directory for the report")
    if not (out_dir / MARKER).is_file():
        taken = [f for f in files if (out_dir / f).exists()]
        if taken:
            raise ConfigError(f"{out_dir / taken[0]} exists and autoquant did not write it: give another --out (a "
                              "report never replaces a file of yours)")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / MARKER, b"written by autoquant report\n")


def write_report(run_dirs: list[Path], out_dir: Path, objective: Cost = Cost.BITOPS) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    runs = [load_run(d) for d in run_dirs]
    claim_report_dir(out_dir, FILES)
    chosen_rows, lines = [], ["# autoquant studies compared", ""]
    lines += ["| study | trials | FP32 % | max drop pt | trial | accuracy % | drop pt | bitops | latency / FP32 | INT8 layers |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fig = plt.figure(figsize=(13, 5 + 0.45 * len(runs) * len(CONSTRAINTS)))
    grid = fig.add_gridspec(2, 1, height_ratios=[3, max(1.5, 0.35 * len(runs) * len(CONSTRAINTS))])
    ax = fig.add_subplot(grid[0])
    for label, fp32, points in runs:
        front = pareto_front(points, objective)
        line, = ax.plot([objective.of(p.result) for p in front], [p.result.accuracy for p in front], "-o", ms=4,
                        label=f"{label}: {len(points)} trials")
        ax.scatter([objective.of(p.result) for p in points], [p.result.accuracy for p in points], s=8,
                   color=line.get_color(), alpha=0.25)
        for max_drop in CONSTRAINTS:
            best, met = choose(points, max_drop, objective)
            r = best.result
            lines.append(f"| {label} | {len(points)} | {fp32:.2f} | {max_drop:g} | {best.number}{'' if met else ' (not met)'} | "
                         f"{r.accuracy:.2f} | {r.accuracy_drop:+.2f} | {r.bitops_fraction:.4f} | {r.latency_ratio:.2f} | "
                         f"{len(best.plan.quantized)}/{len(best.plan.names)} |")
            chosen_rows.append((f"{label} | drop<={max_drop:g}", best))
    ax.set_xscale("log" if objective.log_scale else "linear")
    ax.set_xlabel(objective.label)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Pareto fronts (dots: every trial)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    layer_names = list(dict.fromkeys(n for _, p in chosen_rows for n in p.plan.names))
    categories = ["float", *sorted({category(c) for _, p in chosen_rows for _, c in p.plan.choices} - {"float"})]
    grid_values = np.full((len(chosen_rows), len(layer_names)), np.nan)
    for i, (_, p) in enumerate(chosen_rows):
        for n, c in p.plan.choices:
            grid_values[i, layer_names.index(n)] = categories.index(category(c))
    hm = fig.add_subplot(grid[1])
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(categories))]
    hm.imshow(np.ma.masked_invalid(grid_values), aspect="auto", cmap=ListedColormap(colors), vmin=-0.5,
              vmax=len(categories) - 0.5, interpolation="nearest")
    hm.set_yticks(range(len(chosen_rows)), [r for r, _ in chosen_rows], fontsize=7)
    hm.set_xticks(range(len(layer_names)), [n.strip("/").replace("/Conv", "").replace("/Gemm", "") for n in layer_names],
                  rotation=90, fontsize=6)
    hm.legend(handles=[Patch(color=c, label=name) for name, c in zip(categories, colors)], fontsize=7, ncol=len(colors),
              loc="upper center", bbox_to_anchor=(0.5, -0.35))
    hm.set_title("chosen plan per constraint", fontsize=9)
    fig.tight_layout()
    png = out_dir / "report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    lines += ["", "![Pareto fronts and per-layer choices](report.png)", ""]
    md = atomic_write_bytes(out_dir / "report.md", "\n".join(lines).encode())
    return md, png
