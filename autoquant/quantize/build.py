"""Plan + cached activation parameters → QDQ ONNX model, through onnxruntime's QDQQuantizer.

No data flows through a network here: activation scales and zero points are given explicitly
(TensorQuantOverrides), so the same inputs always produce the same model, whether they come from a
trial or from a record file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from ..errors import ConfigError
from ..graph.layers import GraphInfo
from .float_layers import isolate_float_layers
from .plan import QuantPlan

ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
WEIGHT_TYPES = {8: QuantType.QInt8, 4: QuantType.QInt4}
# Ops that run in the integer domain when everything feeding them is already quantized; quantizing them
# lets onnxruntime fuse QLinearAdd / QLinearGlobalAveragePool and drop Relu into the zero point instead
# of bouncing through float between every pair of layers.
GLUE_OPS = frozenset(
    {"Relu", "Clip", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
     "Concat", "Pad", "Slice", "Transpose", "Squeeze", "Unsqueeze"}
)  # fmt: skip


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


def quantized_nodes(model: onnx.ModelProto, plan: QuantPlan) -> list[onnx.NodeProto]:
    """The plan's quantized layers, plus glue ops whose float inputs all come from quantized nodes."""
    layers = set(plan.quantized)
    inits = {i.name for i in model.graph.initializer}
    quantized_tensors: set[str] = set()
    chosen = []
    for node in model.graph.node:  # ONNX node order is topological
        data_inputs = [t for t in node.input if t and t not in inits]
        is_glue = node.op_type in GLUE_OPS and data_inputs and all(t in quantized_tensors for t in data_inputs)
        if node.name in layers or is_glue:
            chosen.append(node)
            quantized_tensors.update(node.output)
    return chosen


def tensor_algorithms(model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan) -> dict[str, str]:
    """Which range algorithm sets each quantized activation tensor.

    A layer's choice governs its input; tensors that feed no quantized layer inherit from their producer.
    """
    algo: dict[str, str] = {}
    for layer in graph.layers:
        choice = plan[layer.name]
        if choice.quantize:
            algo.setdefault(layer.input, choice.activation_algorithm)
    inits = {i.name for i in model.graph.initializer}
    for node in quantized_nodes(model, plan):
        if node.name in dict(plan.choices):
            source = plan[node.name].activation_algorithm
        else:
            source = next((algo[t] for t in node.input if t in algo), "minmax")
        for t in list(node.input) + list(node.output):
            if t and t not in inits:
                algo.setdefault(t, source)
    return algo


def build_qdq(
    model: onnx.ModelProto,
    graph: GraphInfo,
    plan: QuantPlan,
    activations: dict[str, ActivationParams],
    activation_type: str,
    weight_range: str = "full",
) -> onnx.ModelProto:
    """Compile the plan into TensorQuantOverrides and let QDQQuantizer insert the Q/DQ nodes. `weight_range`
    "reduced" keeps 8-bit weights in [-64, 64] (see weight_range.py: CPUs whose kernels saturate)."""
    qtype = activation_qtype(activation_type)
    np_type = onnx.helper.tensor_dtype_to_np_dtype(qtype.tensor_type)
    qmin, qmax = get_qmin_qmax_for_qType(qtype.tensor_type)
    overrides: dict[str, list[dict]] = {}
    ranges = {}
    for tensor, p in activations.items():
        scale, zp = np.array(p.scale, np.float32), np.array(p.zero_point, np_type)
        overrides[tensor] = [{"scale": scale, "zero_point": zp}]
        ranges[tensor] = TensorData(
            lowest=np.array(p.scale * (int(qmin) - p.zero_point), np.float32),
            highest=np.array(p.scale * (int(qmax) - p.zero_point), np.float32),
        )
    for layer in graph.layers:
        choice = plan[layer.name]
        if not choice.quantize:
            continue
        w = {"quant_type": WEIGHT_TYPES[choice.weight_bits],
             "reduce_range": weight_range == "reduced" and choice.weight_bits == 8}
        if choice.weight_granularity == "per_channel":
            w["axis"] = layer.channel_axis
        overrides[layer.weight] = [w]
    nodes = quantized_nodes(model, plan)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if any(plan[layer.name].quantize and plan[layer.name].weight_bits == 4 for layer in graph.layers):
        # int4 tensors exist from opset 21; onnxruntime's update_opset_version only bumps for int16.
        copy = onnx.version_converter.convert_version(copy, max(21, copy.opset_import[0].version))
    quantizer = QDQQuantizer(
        copy,
        False,  # per_channel: decided per weight through the overrides above
        False,  # reduce_range: not needed on CPUs with VNNI/AMX, and it would cost a bit of precision
        QuantType.QInt8,
        qtype,
        TensorsData(CalibrationMethod.MinMax, ranges),
        [n.name for n in nodes],
        [],
        sorted({n.op_type for n in nodes}),
        {"ActivationSymmetric": False, "WeightSymmetric": True, "TensorQuantOverrides": overrides},
    )
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # the quantizer appends Q/DQ nodes out of order; ONNX requires order
    qmodel = quantizer.model.model
    isolate_float_layers(qmodel, graph, plan)
    return qmodel
