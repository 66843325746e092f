"""Plan + cached activation parameters → one ONNX model that onnxruntime runs with the intended kernel per
layer: static layers through Q/DQ, dynamic and int4 layers through onnxruntime's own quantizers for
them (quantize/modes/), float layers kept float (float_layers.py). Deterministic: the same inputs
always produce the same model, whether they come from a trial or from a record file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from ..errors import ConfigError
from ..graph.layers import GraphInfo
from .float_layers import isolate_float_layers
from .modes import MATMUL_MODES, check_plan, dynamic, int4, matmul_form, static
from .plan import QuantPlan

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
    """onnxruntime's own asymmetric (scale, zero point) formula, so our ranges mean what its would."""
    qtype = activation_qtype(activation_type).tensor_type
    qmin, qmax = get_qmin_qmax_for_qType(qtype)
    zp, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), qmin, qmax)
    return ActivationParams(float(np.float32(scale)), int(zp))


def build_model(
    model: onnx.ModelProto,
    graph: GraphInfo,
    plan: QuantPlan,
    activations: dict[str, ActivationParams],
    activation_type: str,
    weight_range: str = "full",
    weights: static.WeightParams | None = None,
) -> onnx.ModelProto:
    """Compile the plan into one model. `activations` holds the static layers' (and glue's) activation
    parameters; `weight_range` "reduced" keeps 8-bit weights in [-64, 64] (see weight_range.py: CPUs
    whose kernels saturate); `weights` keeps weight parameters across builds of the same model."""
    check_plan(graph.layers, plan)
    qtype = activation_qtype(activation_type)
    qmodel = static.apply(model, graph, plan, activations, qtype, weight_range, weights)
    matmul_layers = {n for mode in MATMUL_MODES for n in plan.in_mode(mode)}
    if matmul_layers:
        matmul_form.as_matmul(qmodel, matmul_layers)
        if plan.in_mode("dynamic"):
            qmodel = dynamic.apply(qmodel, plan, weight_range)
        if plan.in_mode("int4"):
            qmodel = int4.apply(qmodel, plan)
    isolate_float_layers(qmodel, graph, plan)
    return qmodel
