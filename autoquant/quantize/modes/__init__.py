"""How a quantized layer is built, one module per mode (LayerChoice.mode): `static` inserts Q/DQ pairs with
calibrated scales (onnxruntime's QDQQuantizer), `dynamic` quantizes activations at run time
(onnxruntime's dynamic quantizer: DynamicQuantizeLinear + MatMulInteger), `int4` stores blockwise 4-bit
weights (onnxruntime's MatMulNBitsQuantizer). `matmul_form` gives Gemm layers the MatMul form the last
two need. quantize/build.py applies them in that order.
"""

from __future__ import annotations

from ...errors import PlanError
from ...graph.layers import LayerInfo
from ..plan import MODES, QuantPlan

# Modes whose onnxruntime quantizer handles MatMul with a constant 2-D weight only (Gemm via matmul_form).
MATMUL_MODES = ("dynamic", "int4")


def allowed_modes(layer: LayerInfo) -> tuple[str, ...]:
    """The modes a layer can be quantized in (none: it can only stay float)."""
    if not layer.finite:
        return ()
    if layer.op_type in ("MatMul", "Gemm") and len(layer.weight_shape) == 2:
        return MODES
    return ("static",)


def check_plan(layers: list[LayerInfo], plan: QuantPlan) -> None:
    """A plan that asks for a mode a layer cannot take is refused before anything is built."""
    for layer in layers:
        choice = plan[layer.name]
        if choice.quantize and not layer.finite:
            raise PlanError(f"layer {layer.name} has NaN or Inf in its weights: it can only stay float")
        if choice.quantize and choice.mode not in allowed_modes(layer):
            raise PlanError(f"layer {layer.name} is a {layer.op_type} with {len(layer.weight_shape)}-D weights: mode "
                            f"{choice.mode} applies to MatMul/Gemm layers with 2-D weights; use mode static")  # fmt: skip
