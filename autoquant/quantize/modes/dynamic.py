"""Dynamic INT8: weights quantized once (symmetric int8, per channel or per tensor), activations quantized
at run time from their own min/max (uint8), as onnxruntime's `quantize_dynamic` builds them:
DynamicQuantizeLinear + MatMulInteger + the rescaling Muls, which onnxruntime fuses into
DynamicQuantizeMatMul. Built with the quantizer `quantize_dynamic` itself uses (ONNXQuantizer in
IntegerOps mode), restricted to the plan's dynamic layers; nothing is calibrated.
"""

from __future__ import annotations

import logging

import onnx
from onnxruntime.quantization import QuantizationMode, QuantType
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

from ..plan import QuantPlan

HIDDEN_DOMAIN = "autoquant.hidden"


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
        names = [n for n in plan.in_mode("dynamic") if plan[n].weight_granularity == granularity]
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
