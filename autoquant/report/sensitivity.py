"""Sensitivity reports for people: the per-layer, per-choice error table (sensitivity.csv and a heat map) every
search writes and `autoquant sensitivity` prints, and the full one-layer-at-a-time table (`--full`)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..quantize.modes import encode
from ..search import LayerErrors, LayerSensitivity


def write_layer_errors_report(errors: LayerErrors, out_dir: Path) -> tuple[Path, Path]:
    """sensitivity.csv (layer × option error) and sensitivity.png (the same as a heat map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "sensitivity.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", *map(encode, errors.choices), "float"])  # float: no error
        for name, row in zip(errors.layers, errors.table):
            w.writerow([name, *("" if np.isnan(v) else f"{v:.6g}" for v in row), "0"])
    shown = np.log10(np.clip(errors.table, 1e-8, None))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(errors.choices) + 3), max(3.0, 0.25 * len(errors.layers) + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap="magma_r")
    ax.set_xticks(range(len(errors.choices)), [encode(c) for c in errors.choices], rotation=60, ha="right", fontsize=7)
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
