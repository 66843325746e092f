"""Fake quantization: the arithmetic of the built models' quantizers in numpy (quantize, round, clip,
dequantize), for estimating a choice's error without building a model. Each function matches what the
onnxruntime quantizer autoquant builds with writes (tested against the built weights)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .scales import ActivationParams
from .weight_range import REDUCED_MAX


def fake_quant_activation(x: np.ndarray, p: ActivationParams, activation_type: str) -> np.ndarray:
    lo, hi = (0, 255) if activation_type == "uint8" else (-128, 127)
    return ((np.clip(np.round(x / p.scale) + p.zero_point, lo, hi) - p.zero_point) * p.scale).astype(np.float32)


def weight_bounds(bits: int, weight_range: str) -> tuple[int, int]:
    """The integers of onnxruntime's symmetric weight grid: int8 [-127, 127] ([-64, 64] reduced); int4 uses its
    whole range, [-8, 7], so its scale is absmax / 7.5 and only the value at -absmax reaches -8."""
    if bits == 4:
        return -8, 7
    qmax = REDUCED_MAX if weight_range == "reduced" else 127
    return -qmax, qmax


def weight_scale(w: np.ndarray, channel_axis: int, granularity: str, bits: int,
                 weight_range: str) -> tuple[np.ndarray, tuple[int, int]]:
    """(scale broadcastable to `w`, (qmin, qmax)) of the symmetric grid onnxruntime's quantizer puts `w` on for the
    built model: absmax over (qmax - qmin) / 2."""
    bounds = weight_bounds(bits, weight_range)
    if granularity == "per_channel":
        axes = tuple(a for a in range(w.ndim) if a != channel_axis)
        absmax = np.abs(w).max(axis=axes, keepdims=True)
    else:
        absmax = np.abs(w).max()
    half = (bounds[1] - bounds[0]) / 2
    return np.where(absmax > 0, absmax / half, 1.0).astype(np.float32), bounds


def fake_quant_weight(w: np.ndarray, channel_axis: int, granularity: str, bits: int, weight_range: str) -> np.ndarray:
    """Symmetric, rounded to nearest, as onnxruntime's quantizer does it for the built model."""
    scale, bounds = weight_scale(w, channel_axis, granularity, bits, weight_range)
    return (np.clip(np.round(w / scale), *bounds) * scale).astype(np.float32)


def dynamic_params(lowest: float, highest: float) -> ActivationParams:
    """DynamicQuantizeLinear's uint8 parameters for a tensor with these extremes: the range widened to include 0."""
    lo, hi = min(lowest, 0.0), max(highest, 0.0)
    scale = (hi - lo) / 255 or 1.0
    return ActivationParams(scale, round(-lo / scale))


def fake_quant_dynamic_input(x: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear: uint8 from the tensor's own min/max."""
    return fake_quant_activation(x, dynamic_params(float(x.min()), float(x.max())), "uint8")


def in_blocks(a: np.ndarray, axis: int, block: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`fn` applied to `a` cut into blocks of `block` entries along `axis` (zero-padded at the end), as float32."""
    moved = np.moveaxis(a, axis, -1)
    k = moved.shape[-1]
    blocks = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, -k % block)]).reshape(*moved.shape[:-1], -1, block)
    out = fn(blocks).reshape(*moved.shape[:-1], -1)[..., :k]
    return np.moveaxis(out, -1, axis).astype(np.float32)


def fake_quant_blockwise(w: np.ndarray, axis: int, block: int) -> np.ndarray:
    """Asymmetric 4-bit weights with one scale and zero point per block of `block` entries along `axis`
    (the input channels), as MatMulNBitsQuantizer quantizes them."""

    def asymmetric_4bit(blocks: np.ndarray) -> np.ndarray:
        lo = np.minimum(blocks.min(axis=-1, keepdims=True), 0)
        hi = np.maximum(blocks.max(axis=-1, keepdims=True), 0)
        scale = np.where(hi > lo, (hi - lo) / 15, 1.0)
        zero = np.round(-lo / scale)
        return (np.clip(np.round(blocks / scale) + zero, 0, 15) - zero) * scale

    return in_blocks(w, axis, block, asymmetric_4bit)


def fake_quant_blockwise_int8(x: np.ndarray, block: int) -> np.ndarray:
    """Symmetric int8 per block of `block` entries along the last axis (MatMulNBits' int8 compute of its input)."""

    def symmetric_int8(blocks: np.ndarray) -> np.ndarray:
        scale = np.abs(blocks).max(axis=-1, keepdims=True) / 127
        scale = np.where(scale > 0, scale, 1.0)
        return np.round(blocks / scale) * scale

    return in_blocks(x, x.ndim - 1, block, symmetric_int8)
