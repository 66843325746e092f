"""Gemm layers in MatMul form for the dynamic and int4 modes: onnxruntime's dynamic quantizer and its
MatMulNBits quantizer both handle MatMul only. `Gemm(x, W, c)` becomes `MatMul(x, W') [+ Add(c')]` with
alpha, beta and transB folded into the constants (W' = alpha·Wᵀ when transB, c' = beta·c); the MatMul
keeps the layer's name, so plans, records and the executed-kernel check still find it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import PlanError
from ...graph.layers import LayerInfo


def takes_matmul_form(layer: LayerInfo) -> bool:
    """A MatMul, or a Gemm that can be one: a 2-D constant weight."""
    return layer.op_type in ("MatMul", "Gemm") and len(layer.weight_shape) == 2


def as_matmul(model: onnx.ModelProto, names: set[str]) -> None:
    """Rewrite the Gemm nodes named in `names` (in place); other nodes are untouched."""
    inits = {i.name: i for i in model.graph.initializer}
    replaced: set[str] = set()
    for node in [n for n in model.graph.node if n.name in names and n.op_type == "Gemm"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0):
            raise PlanError(f"layer {node.name} is a Gemm with transA: only mode static applies to it")
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        w = (w.T if attrs.get("transB", 0) else w) * np.float32(attrs.get("alpha", 1.0))
        weight = f"{node.name}/matmul_weight"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), weight))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}/matmul" if has_bias else node.output[0]
        new = [helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name)]
        if has_bias:
            c = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) * np.float32(attrs.get("beta", 1.0))
            model.graph.initializer.append(numpy_helper.from_array(c, f"{node.name}/matmul_bias"))
            new.append(helper.make_node("Add", [product, f"{node.name}/matmul_bias"], [node.output[0]],
                                        name=f"{node.name}/bias_add"))
        replaced.update(node.input[1:])
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, n in enumerate(new):
            model.graph.node.insert(index + offset, n)
    used = {t for n in model.graph.node for t in n.input}
    for init in [i for i in model.graph.initializer if i.name in replaced and i.name not in used]:
        model.graph.initializer.remove(init)
