"""Dynamic INT8: weights quantized once (symmetric int8, per channel or per tensor), activations quantized
at run time from their own min/max (uint8), as onnxruntime's `quantize_dynamic` builds them:
DynamicQuantizeLinear + MatMulInteger + the rescaling Muls, which onnxruntime fuses into
DynamicQuantizeMatMul. Built with the quantizer `quantize_dynamic` itself uses (ONNXQuantizer in
IntegerOps mode), restricted to the plan's dynamic layers; nothing is calibrated. MatMul and Gemm layers with 2-D
weights take it (a Gemm in MatMul form, matmul_form.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantizationMode, QuantType
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

from ...errors import ConfigError
from ...graph.layers import LayerInfo
from ..fake import fake_quant_dynamic_input, fake_quant_weight
from ..plan import LayerChoice, QuantPlan
from ..registry import register
from .base import BuildContext, EmulationContext, Mirrored, Mode, Recognized, RecordedWeights
from .matmul_form import as_matmul, takes_matmul_form

HIDDEN_DOMAIN = "autoquant.hidden"
GRANULARITIES = ("per_tensor", "per_channel")


def _rename_gemms(model: onnx.ModelProto, hide: bool) -> None:
    """The dynamic quantizer rewrites every Gemm of the model into Transpose + MatMul when it starts
    (`replace_gemm_with_matmul`), which would take the plan's static and float Gemm layers out of their
    kernels. Gemms wear another op type while it runs; the plan's dynamic Gemms are MatMuls by then."""
    imports = [o for o in model.opset_import if o.domain == HIDDEN_DOMAIN]
    if hide and not imports:
        model.opset_import.append(onnx.helper.make_opsetid(HIDDEN_DOMAIN, 1))
    for o in imports if not hide else []:
        model.opset_import.remove(o)
    for n in model.graph.node:
        if hide and n.op_type == "Gemm" and not n.domain:
            n.op_type, n.domain = "HiddenGemm", HIDDEN_DOMAIN
        elif not hide and n.domain == HIDDEN_DOMAIN:
            n.op_type, n.domain = "Gemm", ""


class _NotAlreadyQuantized(logging.Filter):
    """A mixed plan's model has static Q/DQ nodes by design: the quantizer's root-logger warning that the
    model "is already quantized" says nothing to the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "already quantized" not in record.getMessage()


def apply(model: onnx.ModelProto, plan: QuantPlan, weight_range: str) -> onnx.ModelProto:
    """`model` with the plan's dynamic layers as integer MatMuls. The dynamic quantizer decides per-channel
    weights for the whole model, so layers are quantized in one pass per granularity."""
    for granularity in ("per_channel", "per_tensor"):
        names = [n for n in plan.in_mode(DynamicChoice.mode) if plan[n].weight_granularity == granularity]
        if not names:
            continue
        _rename_gemms(model, hide=True)
        model = _quantize(model, names, granularity == "per_channel", weight_range)
        _rename_gemms(model, hide=False)
        # Its MatMulInteger is named "<layer>_quant"; the layer's name is free again and finds it.
        for node in model.graph.node:
            if (
                node.op_type == "MatMulInteger"
                and node.name.endswith("_quant")
                and node.name[: -len("_quant")] in names
            ):
                node.name = node.name[: -len("_quant")]
    return model


def _quantize(model: onnx.ModelProto, names: list[str], per_channel: bool, weight_range: str) -> onnx.ModelProto:
    quantizer = ONNXQuantizer(
        model,
        per_channel,
        weight_range == "reduced",  # 7-bit weights where uint8 x int8 kernels saturate (weight_range.py)
        QuantizationMode.IntegerOps,
        False,  # static: activations are quantized at run time
        QuantType.QInt8,
        QuantType.QUInt8,  # DynamicQuantizeLinear produces uint8 only
        None,
        names,
        [],
        ["MatMul"],
        {"MatMulConstBOnly": True},
    )
    root, quiet = logging.getLogger(), _NotAlreadyQuantized()
    root.addFilter(quiet)
    try:
        quantizer.quantize_model()
    finally:
        root.removeFilter(quiet)
    return quantizer.model.model


@dataclass(frozen=True)
class DynamicChoice(LayerChoice):
    """Dynamic INT8: symmetric int8 weights per channel or per tensor, activations quantized at run time."""

    mode: ClassVar[str] = "dynamic"
    weight_granularity: str = "per_channel"

    def __post_init__(self):
        if self.weight_granularity not in GRANULARITIES:
            raise ConfigError(f"mode dynamic takes weight_granularity {' or '.join(GRANULARITIES)}")


class Dynamic(Mode):
    choice = DynamicChoice
    scope = "MatMul/Gemm layers with 2-D weights"
    built_by = "onnxruntime's dynamic quantizer (`quantize_dynamic`'s), per layer"
    runs_as = "`DynamicQuantizeMatMul` (DynamicQuantizeLinear + MatMulInteger, fused)"
    stores = "8 bit"
    order = 1
    fixed = MappingProxyType({"activation_algorithm": "minmax", "weight_bits": 8, "block_size": 0, "accuracy_level": 0,
                              "bias_correction": False, "weight_rounding": "nearest"})
    kernels = frozenset({"MatMulInteger"})
    recipe = "transformer"

    def applies_to(self, layer: LayerInfo) -> bool:
        return takes_matmul_form(layer)

    def cost_bits(self, choice: DynamicChoice) -> tuple[int, int]:
        return 8, 8

    def choices(self, allowed: Mapping[str, tuple]) -> list[LayerChoice]:
        return [DynamicChoice(g) for g in allowed["weight_granularity"] if g in GRANULARITIES]

    def encode(self, choice: DynamicChoice) -> str:
        return f"dynamic:{choice.weight_granularity}"

    def decode(self, value: str) -> LayerChoice | None:
        head, *rest = value.split(":")
        return DynamicChoice(rest[0]) if head == "dynamic" and rest else None

    def variant_key(self, choice: DynamicChoice) -> tuple:
        return (choice.weight_granularity,)  # the same integer MatMul either way

    def with_variant(self, choice: DynamicChoice, key: tuple) -> LayerChoice | None:
        return choice.with_fields(weight_granularity=key[0]) if len(key) == 1 else None

    def weight_key(self, choice: DynamicChoice) -> tuple:
        return ("symmetric", choice.weight_granularity, 8)  # the weights static INT8 has: one emulation for both

    def emulate_weight(self, w: np.ndarray, layer: LayerInfo, choice: DynamicChoice, ctx: EmulationContext) -> np.ndarray:
        return fake_quant_weight(w, layer.channel_axis, choice.weight_granularity, 8, ctx.weight_range)

    def emulate_input(self, x: np.ndarray, layer: LayerInfo, choice: DynamicChoice, ctx: EmulationContext) -> np.ndarray:
        return fake_quant_dynamic_input(x)

    def build(self, model: onnx.ModelProto, plan: QuantPlan, ctx: BuildContext) -> onnx.ModelProto:
        as_matmul(model, set(plan.in_mode(self.name)))
        return apply(model, plan, ctx.weight_range)

    def recorded_weights(self, qmodel: onnx.ModelProto, node: onnx.NodeProto, choice: DynamicChoice) -> RecordedWeights:
        # The weight scale is the initializer multiplied with DynamicQuantizeLinear's run-time scale.
        inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
        x_scale = next(n.output[1] for n in qmodel.graph.node if n.op_type == "DynamicQuantizeLinear"
                       and n.output[0] == node.input[0])
        mul = next(n for n in qmodel.graph.node if n.op_type == "Mul" and x_scale in n.input)
        scale = inits[next(t for t in mul.input if t != x_scale)]
        return RecordedWeights(8, choice.weight_granularity, np.atleast_1d(scale).astype(float).tolist(),
                               np.atleast_1d(inits[node.input[3]]).astype(int).tolist())

    def from_record(self, bits: int, granularity: str, block_size: int, algorithm: str, accuracy_level: int) -> LayerChoice:
        return DynamicChoice(granularity)

    def recognize(self, node, inits, producers) -> Recognized | None:
        if node.op_type not in self.kernels or len(node.input) < 2 or node.input[1] not in inits:
            return None
        return Recognized("MatMul", node.input[1], 8, "integer", self.name)

    def mirrored(self, choice: DynamicChoice) -> Mirrored:
        return Mirrored(choice, choice.weight_granularity, 8, bias_on_grid=False, runtime_input=True)


register(Dynamic())
