"""Quantization modes, one module per mode, each defining its choice type and registering a `Mode` (base.py):
`static` inserts Q/DQ pairs with calibrated scales (onnxruntime's QDQQuantizer), `dynamic` quantizes activations at
run time (onnxruntime's dynamic quantizer: DynamicQuantizeLinear + MatMulInteger), `int4` stores blockwise 4-bit
weights (onnxruntime's MatMulNBitsQuantizer); `matmul_form` gives Gemm layers the MatMul form the last two need,
`weight_params` keeps static's weight scales across builds.
Everything else looks a mode up here: a new mode is a new module in this package (or a module anywhere that calls
`register`), and no other file changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from ...errors import PlanError
from ...graph.layers import GraphInfo, LayerInfo
from ..plan import LayerChoice, QuantPlan
from ..registry import get, modes, names, register
from .base import (
    BuildCache,
    BuildContext,
    EmulationContext,
    Mirrored,
    Mode,
    Recognized,
    RecordedActivation,
    RecordedWeights,
    allowed_modes,
    decode,
    encode,
    recognize,
)

__all__ = ["BuildCache", "BuildContext", "EmulationContext", "Mirrored", "Mode", "Recognized", "RecordedActivation",
           "RecordedWeights", "activation_tensors", "allowed_modes", "check_plan", "decode", "encode", "get", "modes",
           "names", "recipe_choice", "recognize", "register"]


def check_plan(layers: list[LayerInfo], plan: QuantPlan) -> None:
    """A plan that asks for a mode a layer cannot take is refused before anything is built."""
    for layer in layers:
        choice = plan[layer.name]
        if choice.quantize and not layer.finite:
            raise PlanError(f"layer {layer.name} has NaN or Inf in its weights: it can only stay float")
        if choice.quantize and choice.mode not in allowed_modes(layer):
            raise PlanError(f"layer {layer.name} is a {layer.op_type} with {len(layer.weight_shape)}-D weights: mode "
                            f"{choice.mode} applies to {get(choice.mode).scope}; use mode "
                            f"{' or '.join(allowed_modes(layer))}")
        if choice.quantize and not get(choice.mode).fits(layer, choice):
            raise PlanError(get(choice.mode).misfit(layer, choice))


def activation_tensors(model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan) -> dict[str, str]:
    """Every activation tensor the plan quantizes with calibrated scales, and the range algorithm that sets each."""
    out: dict[str, str] = {}
    for mode in modes():
        if plan.in_mode(mode.name):
            out.update(mode.activation_tensors(model, graph, plan))
    return out


def recipe_choice(layers: Sequence[LayerInfo]) -> LayerChoice:
    """The choice onnxruntime's recipe gives every layer of such a model: a convolutional network's (static INT8),
    or a transformer's — a model without convolutions — (dynamic INT8), from the modes' `recipe`."""
    kind = "convolutional" if any(layer.op_type == "Conv" for layer in layers) else "transformer"
    return next((m.recipe_choice() for m in modes() if m.recipe == kind), LayerChoice.default())
