"""Make a layer the plan keeps float run float in onnxruntime — in any default session, not only ours.

onnxruntime's `WeightBiasQuantization` graph transformer (on by default) reads
`DequantizeLinear (per-tensor) → Conv/Gemm with a float weight → [Relu/Clip] → QuantizeLinear` as a
layer whose weights someone forgot to quantize: it quantizes them (symmetric per-tensor INT8) and the
bias, and the node is then fused into QLinearConv / QGemm. That is exactly how a float layer sits
between quantized neighbours in a mixed plan, so without this step such a layer never runs float.

The transformer, like every QDQ node-unit selector, accepts only a per-tensor (scalar) scale on the
activation's DequantizeLinear — no integer kernel takes per-axis activation scales. So a float layer
whose input comes out of a DequantizeLinear reads it from a DequantizeLinear of its own, with the
same scale and zero point repeated along one axis: numerically the identical dequantization, one
cheap node, and a pattern no transformer treats as a quantized node unit. The block is on the input
side on purpose: reading the float tensor from *before* the QuantizeLinear instead would give the
quantized producer a non-Q consumer, and a producer whose output does not go only to
QuantizeLinear drops out of its own integer kernel. Whether this still holds on the installed
onnxruntime is checked on the optimized graph of every built model (`evaluate/executed.py`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.layers import GraphInfo, LayerInfo
from .plan import QuantPlan


def _input_axis(layer: LayerInfo, node: onnx.NodeProto) -> tuple[int, int]:
    """(axis, length) of the layer's input along which its length is known from the weight alone."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = layer.weight_shape
    if layer.op_type == "Conv":
        return 1, w[1] * attrs.get("group", 1)
    if layer.op_type == "Gemm":
        return (0 if attrs.get("transA", 0) else 1), (w[1] if attrs.get("transB", 0) else w[0])
    return -1, w[-2]  # MatMul: [..., K] x [K, N]


def isolate_float_layers(model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan) -> None:
    """Give every float layer that reads a per-tensor DequantizeLinear its own per-axis copy of it (in place)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    made: dict[tuple[str, int], str] = {}  # (dequantized tensor, axis) → its per-axis copy
    for layer in graph.layers:
        if plan[layer.name].quantize:
            continue
        node = nodes[layer.name]
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or inits[dq.input[1]].size != 1:
            continue
        axis, length = _input_axis(layer, node)
        if length < 2:
            continue  # a length-1 axis reads as per-tensor: nothing to block with (the executed check reports it)
        key = (node.input[0], axis)
        if key not in made:
            base = f"{layer.name}/float_input"
            scale = np.full(length, inits[dq.input[1]].reshape(()), inits[dq.input[1]].dtype)
            args = [dq.input[0], f"{base}_scale"]
            model.graph.initializer.append(numpy_helper.from_array(scale, f"{base}_scale"))
            if len(dq.input) > 2 and dq.input[2]:
                zp = inits[dq.input[2]]
                model.graph.initializer.append(numpy_helper.from_array(np.full(length, zp.reshape(()), zp.dtype),
                                                                       f"{base}_zero_point"))
                args.append(f"{base}_zero_point")
            copy = helper.make_node("DequantizeLinear", args, [f"{base}_dequantized"], name=f"{base}_DequantizeLinear",
                                    axis=axis)
            model.graph.node.insert(list(model.graph.node).index(node), copy)
            made[key] = copy.output[0]
        node.input[0] = made[key]
