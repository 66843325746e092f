"""Sensitivity reports. The full table (`autoquant sensitivity --full`) quantizes one layer at a time (INT8,
per-channel, minmax), the rest float, and evaluates the whole eval set for each: exact, and one full
evaluation per layer, so studies use the cheap per-layer, per-choice errors instead (layer_errors.py),
which `autoquant sensitivity` and every search report as a table and a heat map.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..calibrate.cache import cached_arrays
from ..quantize.plan import FLOAT, LayerChoice, QuantPlan
from ..workspace import Workspace
from .layer_errors import LayerErrors
from .objective import PlanScorer, TrialFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    accuracy_drop: float  # points lost when only this layer is INT8
    output_mse: float  # relative MSE of the outputs against FP32: finer-grained than accuracy


def single_layer_plan(ws: Workspace, name: str) -> QuantPlan:
    return QuantPlan(tuple((n, LayerChoice() if n == name else FLOAT) for n in ws.graph.names))


def layer_sensitivity(ws: Workspace, scorer: PlanScorer | None = None, progress=None) -> list[LayerSensitivity]:
    """Sensitivities in graph order, from the cache when this model and data were measured before."""

    def build():
        ws.reference  # noqa: B018 - a metric that cannot score this data fails here, once, not once per layer
        score = scorer or PlanScorer(ws)
        drops, mses = [], []
        for i, name in enumerate(ws.graph.names):
            try:
                r = score(single_layer_plan(ws, name))
                drops.append(r.accuracy_drop)
                mses.append(r.output_mse)
            except TrialFailed as exc:  # a layer that cannot be quantized alone is the most sensitive
                log.warning("sensitivity of %s: %s", name, exc)
                drops.append(np.nan)
                mses.append(np.inf)
            if progress:
                progress(i + 1, len(ws.graph.names), name)
        return {"drop": np.array(drops), "mse": np.array(mses)}

    ev = ws.splits.eval
    key = f"sensitivity-v2:{ws.sha}:{ws.splits.calibration.sha256()}:{ev.sha256()}:{ws.exp.quantization}:{ws.weight_range}:{ws.exp.eval.metric}"
    path = ws.exp.cache / "sensitivity" / f"{ws.sha[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    arrays = cached_arrays(path, key, build)
    return [LayerSensitivity(n, float(d), float(m)) for n, d, m in zip(ws.graph.names, arrays["drop"], arrays["mse"])]


def most_sensitive(rows: list[LayerSensitivity], k: int) -> list[str]:
    return [r.layer for r in sorted(rows, key=lambda r: (r.output_mse, r.accuracy_drop), reverse=True)[:k]]


def write_layer_errors_report(errors: LayerErrors, out_dir: Path) -> tuple[Path, Path]:
    """sensitivity.csv (layer × option error) and sensitivity.png (the same as a heat map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "sensitivity.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", *errors.options])
        for name, row in zip(errors.layers, errors.table):
            w.writerow([name, *("" if np.isnan(v) else f"{v:.6g}" for v in row)])
    quantized = [j for j, o in enumerate(errors.options) if o != "float"]
    shown = np.log10(np.clip(errors.table[:, quantized], 1e-8, None))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(quantized) + 3), max(3.0, 0.25 * len(errors.layers) + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap="magma_r")
    ax.set_xticks(range(len(quantized)), [errors.options[j] for j in quantized], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(errors.layers)), errors.layers, fontsize=6)
    fig.colorbar(image, ax=ax, label="log10 relative error at the layer's output")
    ax.set_title("Error each choice adds at its layer (blank: not in the search space)")
    fig.tight_layout()
    png_path = out_dir / "sensitivity.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return csv_path, png_path


def write_sensitivity_report(rows: list[LayerSensitivity], out_dir: Path) -> tuple[Path, Path]:
    """sensitivity_full.csv and a bar plot, most sensitive layer first (the full one-layer-at-a-time table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = sorted(rows, key=lambda r: r.output_mse, reverse=True)
    csv_path = out_dir / "sensitivity_full.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "accuracy_drop_pt", "relative_output_mse"])
        for r in ranked:
            w.writerow([r.layer, f"{r.accuracy_drop:.3f}", f"{r.output_mse:.6g}"])
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.0, 0.28 * len(rows) + 1)), sharey=True)
    labels = [r.layer for r in ranked][::-1]
    axes[0].barh(labels, [r.output_mse for r in ranked][::-1], color="tab:blue")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("relative output MSE vs FP32 (log)")
    axes[1].barh(labels, [r.accuracy_drop for r in ranked][::-1], color="tab:red")
    axes[1].set_xlabel("top-1 drop (points)")
    fig.suptitle("Per-layer sensitivity: only this layer INT8 (per-channel, minmax)")
    axes[0].tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    png_path = out_dir / "sensitivity_full.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return csv_path, png_path
