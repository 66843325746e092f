"""Int4 weight-only: each weight column quantized in blocks of `block_size` input channels (asymmetric
4-bit, one scale and zero point per block), activations left float and, at accuracy level 4, quantized
to int8 per block inside the kernel. onnxruntime's MatMulNBitsQuantizer writes one MatMulNBits node per
layer, which has fast CPU kernels; 4-bit Q/DQ weights (static mode) have none. MatMul and Gemm layers with 2-D
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
from onnxruntime.quantization import QuantFormat

from ...errors import ConfigError
from ...graph.layers import LayerInfo
from ..fake import fake_quant_blockwise, fake_quant_blockwise_int8
from ..plan import LayerChoice, QuantPlan
from ..registry import register
from .base import BuildContext, EmulationContext, Mode, Recognized, RecordedWeights
from .matmul_form import as_matmul, takes_matmul_form

BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits' compute precision: 4 multiplies in int8 (its fast CPU kernels), 1 in float32.
ACCURACY_LEVELS = (4, 1)


def _quantizer():
    """onnxruntime's int4 quantizer, imported when a plan first has int4 layers. Importing its module calls
    logging.basicConfig(level=INFO), which would configure the root logger of whatever program imports autoquant
    (and print a line per MatMul it skips): with a handler on the root logger, basicConfig does nothing."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard is not None:
        root.addHandler(guard)
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    finally:
        if guard is not None:
            root.removeHandler(guard)
    return DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer


def apply(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """`model` with the plan's int4 layers as MatMulNBits, one quantizer pass per (block size, accuracy level)."""
    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer = _quantizer()

    groups: dict[tuple[int, int], list[str]] = {}
    for name in plan.in_mode(Int4Choice.mode):
        groups.setdefault((plan[name].block_size, plan[name].accuracy_level), []).append(name)
    for (block_size, level), names in sorted(groups.items()):
        # The quantizer takes every MatMul unless excluded: exclude all but this group's layers.
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in names]
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, accuracy_level=level,
                                              quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",))
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=others, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
        for node in model.graph.node:  # named "<layer>_Q4" by the quantizer; give it the layer's name back
            if node.op_type == "MatMulNBits" and node.name.endswith("_Q4") and node.name[:-3] in names:
                node.name = node.name[:-3]
    return model


@dataclass(frozen=True)
class Int4Choice(LayerChoice):
    """Int4 weight-only: asymmetric 4-bit weight blocks, MatMulNBits."""

    mode: ClassVar[str] = "int4"
    block_size: int = 32  # weights share a scale per block of this many input channels
    accuracy_level: int = 4  # MatMulNBits' compute precision

    def __post_init__(self):
        if self.block_size not in BLOCK_SIZES or self.accuracy_level not in ACCURACY_LEVELS:
            raise ConfigError(f"mode int4 needs block_size in {list(BLOCK_SIZES)} and accuracy_level in "
                              f"{list(ACCURACY_LEVELS)}, got {self.block_size} / {self.accuracy_level}")


class Int4(Mode):
    choice = Int4Choice
    scope = "MatMul/Gemm layers with 2-D weights"
    built_by = "`MatMulNBitsQuantizer` (asymmetric blocks, round to nearest)"
    runs_as = "`MatMulNBits`"
    stores = "4 bit + one scale and zero point per block"
    order = 2
    fixed = MappingProxyType({"weight_granularity": "per_block", "activation_algorithm": "minmax", "weight_bits": 4,
                              "bias_correction": False, "weight_rounding": "nearest"})
    kernels = frozenset({"MatMulNBits"})
    weight_zero_points = (0, 15)  # asymmetric 4-bit blocks

    def applies_to(self, layer: LayerInfo) -> bool:
        return takes_matmul_form(layer)

    def cost_bits(self, choice: Int4Choice) -> tuple[int, int]:
        return (8 if choice.accuracy_level == 4 else 32), 4  # level 4 multiplies in int8, level 1 in float

    def choices(self, allowed: Mapping[str, tuple]) -> list[LayerChoice]:
        return [Int4Choice(b, a) for b in allowed["block_size"] for a in allowed["accuracy_level"]]

    def encode(self, choice: Int4Choice) -> str:
        return f"int4:b{choice.block_size}" + (f":a{choice.accuracy_level}" if choice.accuracy_level != 4 else "")

    def decode(self, value: str) -> LayerChoice | None:
        head, *rest = value.split(":")
        if head != "int4" or not rest:
            return None
        return Int4Choice(int(rest[0][1:]), int(rest[1][1:]) if len(rest) > 1 else 4)

    def hand_made(self, offered: list[LayerChoice]) -> list[tuple[str, LayerChoice]]:
        return [(f"all-int4-b{offered[0].block_size}", offered[0])] if offered else []

    def weight_key(self, choice: Int4Choice) -> tuple:
        return (self.name, choice.block_size)

    def emulate_weight(self, w: np.ndarray, layer: LayerInfo, choice: Int4Choice, ctx: EmulationContext) -> np.ndarray:
        return fake_quant_blockwise(w, 1 - layer.channel_axis, choice.block_size)

    def input_key(self, choice: Int4Choice) -> tuple:
        return (self.name, choice.block_size, choice.accuracy_level)

    def emulate_input(self, x: np.ndarray, layer: LayerInfo, choice: Int4Choice, ctx: EmulationContext) -> np.ndarray:
        return fake_quant_blockwise_int8(x, choice.block_size) if choice.accuracy_level == 4 else x

    def build(self, model: onnx.ModelProto, plan: QuantPlan, ctx: BuildContext) -> onnx.ModelProto:
        as_matmul(model, set(plan.in_mode(self.name)))
        return apply(model, plan)

    def recorded_weights(self, qmodel: onnx.ModelProto, node: onnx.NodeProto, choice: Int4Choice) -> RecordedWeights:
        inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
        attrs = {a.name: a.i for a in node.attribute}
        blocks = -(-attrs["K"] // attrs["block_size"])
        packed = inits[node.input[3]].reshape(attrs["N"], -1)  # two 4-bit zero points per byte, low nibble first
        zero = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(attrs["N"], -1)[:, :blocks]
        return RecordedWeights(4, "per_block", inits[node.input[2]].astype(float).reshape(-1).tolist(),
                               zero.astype(int).reshape(-1).tolist(), attrs["block_size"])

    def from_record(self, bits: int, granularity: str, block_size: int, algorithm: str, accuracy_level: int) -> LayerChoice:
        return Int4Choice(block_size, accuracy_level)

    def recognize(self, node, inits, producers) -> Recognized | None:
        if node.op_type not in self.kernels or len(node.input) < 2 or node.input[1] not in inits:
            return None
        return Recognized("MatMul", node.input[1], next((a.i for a in node.attribute if a.name == "bits"), 4), "integer",
                          self.name)


register(Int4())
