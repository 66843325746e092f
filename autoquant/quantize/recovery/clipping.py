"""Weight clipping by output error (the piece before rounding): onnxruntime's quantizer puts a layer's weights on a
symmetric grid whose step is the largest |weight| over qmax, per channel or per tensor. One outlier weight then
coarsens the grid for all the others. Clipping the weights to a smaller bound b (so a finer step, b / qmax) trades
the outliers' clipping error for every other weight's rounding error; the bound chosen here is the one whose
quantized weights keep the layer's output on calibration inputs closest to FP32's: of b = r · max|w| for the ratios
r in RATIOS (1: no clipping), the one minimising Σ_rows ‖X·(w − q_b(w))ᵀ‖² — per output channel with per-channel
weights (each channel's error is its own), for the whole layer with one scale per tensor.

The grid is then the clipped weights' own, so the built model needs no override: the layer reads its weights
clipped to b (and rounded on that grid: recovery/__init__.py), and the quantizer's absmax is b."""

from __future__ import annotations

import numpy as np

from ..fake import weight_bounds

RATIOS = np.linspace(0.5, 1.0, 21)  # candidate bounds, as shares of the largest |weight| of a channel (or tensor)


def output_error_bounds(w_matrix: np.ndarray, rows: np.ndarray, bits: int, weight_range: str,
                        per_channel: bool) -> np.ndarray:
    """The clip bound per output channel ([groups · outputs], the layer's channel order) or per tensor ([1]) of
    `w_matrix` ([groups, outputs, inputs]) that minimises its output error on `rows` ([groups, rows, inputs])."""
    w = w_matrix.astype(np.float64)
    x = rows.astype(np.float64)
    inputs = w.shape[-1]
    # ‖X·dᵀ‖² through the rows' second moment (inputs² per output) or through the rows (rows · inputs), the cheaper
    moment = np.einsum("grk,grl->gkl", x, x) if inputs <= x.shape[1] else None
    lo, hi = weight_bounds(bits, weight_range)
    half = (hi - lo) / 2
    absmax = np.abs(w).max(axis=-1)  # [groups, outputs]
    peak = absmax if per_channel else np.full_like(absmax, absmax.max())
    errors = []
    for ratio in RATIOS:
        bound = (peak * ratio)[..., None]
        scale = np.where(bound > 0, bound / half, 1.0)
        d = w - np.clip(np.round(np.clip(w, -bound, bound) / scale), lo, hi) * scale
        if moment is not None:
            errors.append(np.einsum("gok,gok->go", d @ moment, d))
        else:
            errors.append(np.square(x @ d.transpose(0, 2, 1)).sum(axis=1))
    errors = np.stack(errors)  # [ratios, groups, outputs]
    if per_channel:
        best = RATIOS[errors.argmin(axis=0)]
        return (absmax * best).reshape(-1).astype(np.float32)
    return np.array([absmax.max() * RATIOS[errors.sum(axis=(1, 2)).argmin()]], np.float32)
