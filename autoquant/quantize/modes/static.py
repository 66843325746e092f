"""Static INT8 (and 4-bit Q/DQ weights), the default mode: the plan's static layers and the glue between them get
Q/DQ pairs whose activation scales come from calibration, through onnxruntime's QDQQuantizer. Any Conv, Gemm or
MatMul with constant weights takes it. Its choice (StaticChoice) has the weight grid (granularity, bits), the
activation range algorithm and the recovery without training (quantize/recovery/: bias correction, adaptive
rounding), which the record keeps (each layer's rounding mask and bias shift) for `apply`.

No data flows through a network here: activation scales and zero points are given explicitly
(TensorQuantOverrides), so the same inputs always produce the same model, whether they come from a
trial or from a record file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

from ...calibrate.ranges import ALGORITHMS
from ...errors import ConfigError, PlanError
from ...graph.layers import GraphInfo, LayerInfo
from ..fake import fake_quant_activation, fake_quant_weight
from ..plan import LayerChoice, QuantPlan
from ..recovery import (
    CLIPPINGS,
    ROUNDINGS,
    RecordedRecovery,
    check_record_fields,
    clips,
    record_fields,
    recovered_weight,
    substitute,
)
from ..registry import register
from ..scales import activation_qtype
from .base import (
    BuildContext,
    EmulationContext,
    Mirrored,
    Mode,
    Recognized,
    RecordedActivation,
    RecordedWeights,
)
from .weight_params import WeightParams

WEIGHT_TYPES = {8: QuantType.QInt8, 4: QuantType.QInt4}
GRANULARITIES = ("per_tensor", "per_channel")
WEIGHT_BITS = (8, 4)
# Ops that run in the integer domain when everything feeding them is already quantized; quantizing them
# lets onnxruntime fuse QLinearAdd / QLinearGlobalAveragePool and drop Relu into the zero point instead
# of bouncing through float between every pair of layers.
GLUE_OPS = frozenset(
    {"Relu", "Clip", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
     "Concat", "Pad", "Slice", "Transpose", "Squeeze", "Unsqueeze"}
)


def quantized_nodes(model: onnx.ModelProto, plan: QuantPlan) -> list[onnx.NodeProto]:
    """The plan's static layers, plus glue ops whose float inputs all come from quantized nodes."""
    layers = set(plan.in_mode(StaticChoice.mode))
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

    A static layer's choice governs its input; tensors that feed no static layer inherit from their producer.
    """
    algo: dict[str, str] = {}
    static = set(plan.in_mode(StaticChoice.mode))
    for layer in graph.layers:
        if layer.name in static:
            algo.setdefault(layer.input, plan[layer.name].activation_algorithm)
    inits = {i.name for i in model.graph.initializer}
    for node in quantized_nodes(model, plan):
        if node.name in static:
            source = plan[node.name].activation_algorithm
        else:
            source = next((algo[t] for t in node.input if t in algo), "minmax")
        for t in list(node.input) + list(node.output):
            if t and t not in inits:
                algo.setdefault(t, source)
    return algo


def apply(model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan, activations: dict, qtype: QuantType,
          weight_range: str, weights: WeightParams | None = None,
          clipped: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """`model` (changed in place, or converted) with Q/DQ pairs for the plan's static layers and glue;
    `activations` maps tensors to ActivationParams; `weights` caches weight parameters across builds of the same
    model; `clipped`: per layer, the bound its weights are clipped to."""
    weights = weights if weights is not None else WeightParams(model)
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
    static = [layer for layer in graph.layers if layer.name in set(plan.in_mode(StaticChoice.mode))]
    reads = {n.name: n.input[1] for n in model.graph.node if len(n.input) > 1}
    for layer in static:
        choice = plan[layer.name]
        axis = layer.channel_axis if choice.weight_granularity == "per_channel" else None
        reduced = weight_range == "reduced" and choice.weight_bits == 8
        # The grid is the FP32 weights' (or their clipped values') even where the layer reads rounded ones
        # (quantize/recovery/): their values sit on it, so the quantizer writes the recovered integers
        overrides[reads[layer.name]] = weights.overrides(layer.weight, WEIGHT_TYPES[choice.weight_bits], axis, reduced,
                                                         (clipped or {}).get(layer.name))
    nodes = quantized_nodes(model, plan)
    if not nodes:
        return model
    if any(plan[layer.name].weight_bits == 4 for layer in static):
        # int4 tensors exist from opset 21; onnxruntime's update_opset_version only bumps for int16.
        model = onnx.version_converter.convert_version(model, max(21, model.opset_import[0].version))
    quantizer = QDQQuantizer(
        model,
        False,  # per_channel: decided per weight through the overrides above
        False,  # reduce_range: decided per weight through the overrides above (weight_range)
        QuantType.QInt8,
        qtype,
        TensorsData(CalibrationMethod.MinMax, ranges),
        [n.name for n in nodes],
        [],
        sorted({n.op_type for n in nodes}),
        {"ActivationSymmetric": False, "WeightSymmetric": True, "TensorQuantOverrides": overrides},
    )
    with weights.reuse_quantized():
        quantizer.quantize_model()
    quantizer.model.topological_sort()  # the quantizer appends Q/DQ nodes out of order; ONNX requires order
    return quantizer.model.model

@dataclass(frozen=True)
class StaticChoice(LayerChoice):
    """Static INT8 (or 4-bit Q/DQ weights): calibrated activation scales, symmetric weights."""

    mode: ClassVar[str] = "static"
    weight_granularity: str = "per_channel"
    activation_algorithm: str = "minmax"
    weight_bits: int = 8
    bias_correction: bool = False  # the mean output shift quantization adds, folded back into the bias
    weight_rounding: str = "nearest"  # "adaptive": each weight rounded the way that fits its layer's output
    weight_clipping: str = "none"  # "mse": the weights clipped to the bound that keeps the layer's output closest

    def __post_init__(self):
        if self.weight_clipping not in CLIPPINGS:
            raise ConfigError(f"weight_clipping '{self.weight_clipping}' is unknown: use one of {', '.join(CLIPPINGS)}")
        if self.weight_rounding not in ROUNDINGS:
            raise ConfigError(f"weight_rounding '{self.weight_rounding}' is unknown: use one of {', '.join(ROUNDINGS)}")
        if self.weight_granularity not in GRANULARITIES:
            raise ConfigError(f"weight_granularity '{self.weight_granularity}' is unknown: use one of "
                              f"{', '.join(GRANULARITIES)}")
        if self.activation_algorithm not in ALGORITHMS:
            raise ConfigError(f"activation algorithm '{self.activation_algorithm}' is unknown: use one of "
                              f"{', '.join(ALGORITHMS)}")
        if self.weight_bits not in WEIGHT_BITS:
            raise ConfigError(f"weight_bits {self.weight_bits} is not supported: use 8 or 4")
        if self.weight_bits == 4 and self.weight_granularity != "per_channel":
            raise ConfigError("4-bit weights need weight_granularity: per_channel")


class Static(Mode):
    choice = StaticChoice
    scope = "every Conv, Gemm and MatMul with constant weights"
    built_by = "`QDQQuantizer`, calibrated activation scales"
    runs_as = "`QLinearConv` / `QLinearMatMul` / `QGemm` (4-bit Q/DQ weights: a float kernel on dequantized weights)"
    stores = "8 bit, or 4 bit with `weight_bits: 4`"
    order = 0  # first: the other modes' builders rewrite the Gemms whose Q/DQ this one places
    fixed = MappingProxyType({"block_size": 0, "accuracy_level": 0})
    calibrated = True
    recipe = "convolutional"

    def applies_to(self, layer: LayerInfo) -> bool:
        return True

    def fits(self, layer: LayerInfo, choice: StaticChoice) -> bool:
        return not choice.bias_correction or bool(layer.bias_slot)

    def misfit(self, layer: LayerInfo, choice: StaticChoice) -> str:
        return (f"layer {layer.name} ({layer.op_type}) has nowhere to put a bias correction (a MatMul needs an Add of a "
                "constant vector after it): set bias_correction: false for it")

    def fitted(self, layer: LayerInfo, choice: StaticChoice) -> LayerChoice:
        """A space that offers bias correction offers it where the layer has a bias slot, the same choice without it
        elsewhere."""
        return choice if self.fits(layer, choice) else choice.with_fields(bias_correction=False)

    def recipe_choice(self) -> LayerChoice:
        """INT8 per channel, minmax ranges, with bias correction: measured on calibration rows once per study, it
        changes biases, not kernels, and takes the photo bed's all-INT8 drop from 5.4 to 2.6 points
        (benchmarks/results/recovery.json)."""
        return StaticChoice(bias_correction=True)

    def cost_bits(self, choice: StaticChoice) -> tuple[int, int]:
        return 8, choice.weight_bits

    def label(self, choice: StaticChoice) -> str:
        return "int8" if choice.weight_bits == 8 else "int4-qdq"

    def runs(self, choice: StaticChoice) -> str:
        # 4-bit Q/DQ weights have no CPU integer kernel: a float kernel on dequantized weights
        return "integer" if choice.weight_bits == 8 else "dequantized"

    def choices(self, allowed: Mapping[str, tuple]) -> list[LayerChoice]:
        out = []
        recovery = [(bc, r, c) for c in allowed["weight_clipping"] for r in allowed["weight_rounding"]
                    for bc in allowed["bias_correction"]]
        for bits in allowed["weight_bits"]:
            grans = [g for g in allowed["weight_granularity"] if g in GRANULARITIES]
            for g in grans if bits == 8 else [g for g in grans if g == "per_channel"]:  # 4 bits: per channel only
                out += [StaticChoice(g, a, bits, bias_correction=bc, weight_rounding=r, weight_clipping=c)
                        for bc, r, c in recovery for a in allowed["activation_algorithm"]]
        return out

    # Suffixes of the encoding; a choice without recovery encodes as it always has (stored studies stay valid).
    SUFFIXES: ClassVar[dict[str, tuple[str, object]]] = {"bc": ("bias_correction", True), "ar": ("weight_rounding", "adaptive"),
                                                         "mc": ("weight_clipping", "mse")}

    def encode(self, choice: StaticChoice) -> str:
        bits = f":w{choice.weight_bits}" if choice.weight_bits != 8 else ""
        extra = "".join(f":{s}" for s, (field, value) in self.SUFFIXES.items() if getattr(choice, field) == value)
        return f"{choice.weight_granularity}:{choice.activation_algorithm}{bits}{extra}"

    def decode(self, value: str) -> LayerChoice | None:
        head, *rest = value.split(":")
        if head not in GRANULARITIES or not rest:
            return None
        fields = dict(self.SUFFIXES[s] for s in rest[1:] if s in self.SUFFIXES)
        bits = next((int(s[1:]) for s in rest[1:] if s.startswith("w")), 8)
        return StaticChoice(head, rest[0], bits, **fields)

    def hand_made(self, offered: list[LayerChoice]) -> list[tuple[str, LayerChoice]]:
        """All INT8 per channel and per tensor with minmax ranges, and per channel with each other range algorithm the
        space offers: what a user tries by hand first."""
        plans = [("int8-per-channel", StaticChoice()), ("int8-per-tensor", StaticChoice("per_tensor"))]
        algorithms = sorted({c.activation_algorithm for c in offered} - {"minmax"})
        return plans + [(f"int8-per-channel-{a}", StaticChoice(activation_algorithm=a)) for a in algorithms]

    def range_algorithms(self, choice: StaticChoice) -> set[str]:
        return {choice.activation_algorithm}

    def variant_key(self, choice: StaticChoice) -> tuple:
        return choice.activation_algorithm, choice.weight_granularity  # the same QLinear kernels either way

    def with_variant(self, choice: StaticChoice, key: tuple) -> LayerChoice | None:
        return choice.with_fields(activation_algorithm=key[0], weight_granularity=key[1])

    def deferred(self, choice: StaticChoice) -> bool:
        return choice.weight_rounding == "adaptive"  # a fit per layer and grid, seconds each

    def weight_key(self, choice: StaticChoice) -> tuple:
        nearest = ("symmetric", choice.weight_granularity, choice.weight_bits)  # shared with dynamic's emulation
        reshaped = (choice.weight_rounding, choice.weight_clipping)
        return nearest if reshaped == ("nearest", "none") else (*nearest, *reshaped)

    def emulate_weight(self, w: np.ndarray, layer: LayerInfo, choice: StaticChoice, ctx: EmulationContext) -> np.ndarray:
        if choice.weight_rounding == "nearest" and not clips(choice):
            return fake_quant_weight(w, layer.channel_axis, choice.weight_granularity, choice.weight_bits, ctx.weight_range)
        return recovered_weight(w, layer, choice, ctx.weight_range, ctx.recovery)

    def input_key(self, choice: StaticChoice) -> tuple:
        return (self.name, choice.activation_algorithm)

    def emulate_input(self, x: np.ndarray, layer: LayerInfo, choice: StaticChoice, ctx: EmulationContext) -> np.ndarray:
        return fake_quant_activation(x, ctx.activation(layer.input, choice.activation_algorithm), ctx.activation_type)

    def output_key(self, choice: StaticChoice) -> tuple:
        return ("bias_correction",) if choice.bias_correction else ()

    def emulate_output(self, y: np.ndarray, layer: LayerInfo, choice: StaticChoice, ctx: EmulationContext) -> np.ndarray:
        if not choice.bias_correction:
            return y
        shift = ctx.recovery.shift(layer, choice)
        axis = 1 if layer.op_type == "Conv" else y.ndim - 1
        return y + shift.reshape([-1 if a == axis else 1 for a in range(y.ndim)])

    def build(self, model: onnx.ModelProto, plan: QuantPlan, ctx: BuildContext) -> onnx.ModelProto:
        # The recovering layers read their rounded weights and corrected bias first; their grids (the cache's) are
        # the FP32 weights', on which the recovered values sit, so the quantizer writes the recovered integers.
        recovery = ctx.recovery or RecordedRecovery(ctx.recorded)
        substitute(model, ctx.graph, plan, ctx.weight_range, recovery)
        weights = ctx.cache.get(self.name, WeightParams)
        clipped = {la.name: recovery.clipping(la, plan[la.name]) for la in ctx.graph.layers
                   if plan[la.name].mode == self.name and clips(plan[la.name])}
        return apply(model, ctx.graph, plan, ctx.activations, activation_qtype(ctx.activation_type), ctx.weight_range,
                     weights, clipped)

    def activation_tensors(self, model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan) -> dict[str, str]:
        return tensor_algorithms(model, graph, plan)

    def recorded_weights(self, qmodel: onnx.ModelProto, node: onnx.NodeProto, choice: StaticChoice) -> RecordedWeights:
        w = dequantize_params(qmodel, node.input[1])
        if w is None:
            raise PlanError(f"layer {node.name} was not quantized by onnxruntime; cannot record it")
        return RecordedWeights(choice.weight_bits, choice.weight_granularity, np.atleast_1d(w[0]).astype(float).tolist(),
                               np.atleast_1d(w[1]).astype(int).tolist())

    def recorded_activation(self, qmodel: onnx.ModelProto, node: onnx.NodeProto,
                            choice: StaticChoice) -> RecordedActivation:
        d = dequantize_params(qmodel, node.input[0])
        if d is None:
            raise PlanError(f"layer {node.name} was not quantized by onnxruntime; cannot record it")
        return RecordedActivation(8, choice.activation_algorithm, float(np.asarray(d[0]).reshape(())),
                                  int(np.asarray(d[1]).reshape(())))

    def record_extra(self, layer: LayerInfo, choice: StaticChoice, recovery) -> dict:
        return record_fields(layer, choice, recovery)

    def check_extra(self, extra: Mapping, layer: LayerInfo, choice: StaticChoice, where: str) -> None:
        check_record_fields(extra, layer, choice, where)

    def from_record(self, bits: int, granularity: str, block_size: int, algorithm: str, accuracy_level: int) -> LayerChoice:
        return StaticChoice(granularity, algorithm, bits)

    def recognize(self, node, inits, producers) -> Recognized | None:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            return None
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            return None
        data_type = inits[dq.input[0]].data_type
        bits = 4 if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) else \
            onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
        choice = StaticChoice(weight_bits=bits) if bits in WEIGHT_BITS else None
        return Recognized(node.op_type, dq.input[0], bits, self.runs(choice) if choice else "integer",
                          self.label(choice) if choice else f"int{bits}")

    def mirrored(self, choice: StaticChoice) -> Mirrored:
        plain = choice.with_fields(bias_correction=False, weight_rounding="nearest", weight_clipping="none")
        return Mirrored(plain, choice.weight_granularity, choice.weight_bits, bias_on_grid=True, runtime_input=False)


def dequantize_params(qmodel: onnx.ModelProto, tensor: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Scale and zero point of the DequantizeLinear that produces `tensor`, if any."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    for node in qmodel.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == tensor:
            return numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])
    return None


register(Static())
