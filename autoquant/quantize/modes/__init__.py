"""Quantization modes, one module per mode, each registering a `Mode` (base.py): `static` inserts Q/DQ pairs
with calibrated scales (onnxruntime's QDQQuantizer), `dynamic` quantizes activations at run time (onnxruntime's
dynamic quantizer: DynamicQuantizeLinear + MatMulInteger), `int4` stores blockwise 4-bit weights (onnxruntime's
MatMulNBitsQuantizer); `matmul_form` gives Gemm layers the MatMul form the last two need. Everything else looks a
mode up here by name: a new mode is a new module in this package.
"""

from __future__ import annotations

from ...errors import PlanError
from ...graph.layers import LayerInfo
from ..plan import QuantPlan
from .base import (
    BuildContext,
    EmulationContext,
    Mode,
    Recognized,
    RecordedWeights,
    allowed_modes,
    decode,
    encode,
    get,
    modes,
    names,
    recognize,
)

__all__ = ["BuildContext", "EmulationContext", "Mode", "Recognized", "RecordedWeights", "allowed_modes", "check_plan",
           "decode", "encode", "get", "modes", "names", "recognize"]  # fmt: skip


def check_plan(layers: list[LayerInfo], plan: QuantPlan) -> None:
    """A plan that asks for a mode a layer cannot take is refused before anything is built."""
    for layer in layers:
        choice = plan[layer.name]
        if choice.quantize and not layer.finite:
            raise PlanError(f"layer {layer.name} has NaN or Inf in its weights: it can only stay float")
        if choice.quantize and choice.mode not in allowed_modes(layer):
            raise PlanError(f"layer {layer.name} is a {layer.op_type} with {len(layer.weight_shape)}-D weights: mode "
                            f"{choice.mode} applies to {get(choice.mode).scope}; use mode "
                            f"{' or '.join(allowed_modes(layer))}")  # fmt: skip
        if choice.quantize and not get(choice.mode).fits(layer, choice):
            raise PlanError(f"layer {layer.name} ({layer.op_type}) has nowhere to put a bias correction (a MatMul needs "
                            "an Add of a constant vector after it): set bias_correction: false for it")  # fmt: skip
