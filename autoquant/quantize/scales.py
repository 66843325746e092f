"""Activation quantization parameters: onnxruntime's own (scale, zero point) formula for a range, so autoquant's
ranges mean what its would."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from ..errors import ConfigError

ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


@dataclass(frozen=True)
class ActivationParams:
    scale: float
    zero_point: int


def activation_qtype(name: str) -> QuantType:
    if name not in ACTIVATION_TYPES:
        raise ConfigError(f"activation_type '{name}' is unknown: use one of {', '.join(ACTIVATION_TYPES)}")
    return ACTIVATION_TYPES[name]


def params_from_range(lo: float, hi: float, activation_type: str) -> ActivationParams:
    qtype = activation_qtype(activation_type).tensor_type
    qmin, qmax = get_qmin_qmax_for_qType(qtype)
    zp, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), qmin, qmax)
    return ActivationParams(float(np.float32(scale)), int(zp))
