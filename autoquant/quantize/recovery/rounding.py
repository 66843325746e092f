"""Adaptive rounding of a layer's weights (AdaRound, Nagel et al. 2020, as AIMET implements it): instead of
rounding every weight to its nearest grid point, learn for each weight whether it rounds down or up so that the
layer's output on real inputs stays closest to FP32's. Rounding to nearest minimises each weight's own error;
the errors of a row of weights add up in the output, and choosing the directions together cancels much of it.

A continuous relaxation h(V) ∈ [0, 1] (a rectified sigmoid) replaces the up/down choice; V is optimised by Adam
on ||X·W̃ᵀ − X·Wᵀ||² over sampled input rows X (forms.py) plus a regulariser that pushes every h to 0 or 1 as its
exponent β anneals from 20 to 2; then h is hardened at 0.5. The grid (scale per channel or per tensor, the CPU's
weight range) is the one the built model uses (fake.py), so the learned integers are the ones the model holds.
If the hardened rounding does worse than nearest on held-out rows, nearest is kept: the choice never hurts the
layer it is made for.

Why our own and not a library's: AIMET's and NNCF's implementations run on their own model graphs (PyTorch or
their IR), and onnxruntime has none; this one works on any ONNX layer from sampled rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound's values)
REG = 0.01  # weight of the rounding regulariser against the reconstruction error
WARMUP = 0.2  # share of iterations before the regulariser starts
BETA = (20.0, 2.0)


@dataclass(frozen=True)
class RoundingSettings:
    iterations: int = 500
    batch_rows: int = 256  # rows per Adam step (drawn from the training rows)
    lr: float = 1e-2
    seed: int = 0


def nearest_mask(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The rounding mask (1: round up from the floor) that rounding to nearest gives."""
    v = w / scale
    return (np.round(v) > np.floor(v)).astype(np.uint8)


def rounded_weight(w: np.ndarray, scale: np.ndarray, bounds: tuple[int, int], mask: np.ndarray) -> np.ndarray:
    """The weight on the grid with each entry rounded as `mask` says (1 up from the floor, 0 down), as float32:
    the values the quantizer then maps to exactly these integers."""
    q = np.clip(np.floor(w / scale) + mask, *bounds)
    return (q * scale).astype(np.float32)


def _h(v):
    import torch

    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _error(x: np.ndarray, w_matrix: np.ndarray, target: np.ndarray) -> float:
    return float(np.square(np.einsum("grk,gok->gro", x, w_matrix) - target, dtype=np.float64).sum())


def adaround(w_matrix: np.ndarray, scale: np.ndarray, bounds: tuple[int, int], train: np.ndarray, held: np.ndarray,
             settings: RoundingSettings, target: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """The rounding mask of `w_matrix` ([groups, outputs, inputs], `scale` broadcast to it) learned on the `train`
    rows ([groups, rows, inputs]), and the held-out rows' output error of (nearest, the returned mask). The output
    reproduced is that of `target` (the FP32 weights where `w_matrix` holds them clipped), else of `w_matrix`."""
    target = w_matrix if target is None else target
    import torch  # here: importing autoquant must not pay for torch

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    floor = np.floor(w_matrix / scale)
    rest = np.clip(w_matrix / scale - floor, 1e-4, 1 - 1e-4)
    v = torch.tensor(-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0), dtype=torch.float32, requires_grad=True)
    floor_t, scale_t = torch.tensor(floor, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)
    x_t = torch.tensor(train)
    y_t = torch.einsum("grk,gok->gro", x_t, torch.tensor(target))
    opt = torch.optim.Adam([v], lr=settings.lr)
    warm = int(settings.iterations * WARMUP)
    for step in range(settings.iterations):
        rows = torch.tensor(rng.choice(train.shape[1], min(settings.batch_rows, train.shape[1]), replace=False))
        h = _h(v)
        w_soft = torch.clamp(floor_t + h, *bounds) * scale_t
        recon = torch.square(torch.einsum("grk,gok->gro", x_t[:, rows], w_soft) - y_t[:, rows]).sum(-1).mean()
        loss = recon
        if step >= warm:
            beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - (step - warm) / max(1, settings.iterations - warm))
            loss = loss + REG * (1 - torch.abs(2 * h - 1) ** beta).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = (v.detach().numpy() >= 0).astype(np.uint8)  # h(V) ≥ 0.5
    nearest = nearest_mask(w_matrix, scale)
    wanted = np.einsum("grk,gok->gro", held, target)
    err_nearest = _error(held, rounded_weight(w_matrix, scale, bounds, nearest), wanted)
    err_learned = _error(held, rounded_weight(w_matrix, scale, bounds, learned), wanted)
    if err_learned >= err_nearest:
        return nearest, err_nearest, err_nearest
    return learned, err_nearest, err_learned
