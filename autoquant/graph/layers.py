"""Quantizable layers of a pre-processed model, with shapes and FLOPs from ONNX shape inference.

FLOPs are counted as 2 × MACs (one multiply and one add per MAC), per sample (batch = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ..errors import ModelError

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerInfo:
    name: str
    op_type: str
    input: str
    weight: str
    output: str
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]  # per sample, batch dimension dropped
    channel_axis: int  # output-channel axis of the weight, for per-channel scales
    depthwise: bool
    flops: int

    @property
    def out_channels(self) -> int:
        return self.weight_shape[self.channel_axis]


@dataclass(frozen=True)
class GraphInfo:
    layers: tuple[LayerInfo, ...]
    float_tensors: tuple[str, ...]  # every float activation (not initializer): calibration candidates

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple, int]]:
    inferred = shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        out[vi.name] = (dims, tt.elem_type)
    return out


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def analyze(model: onnx.ModelProto) -> GraphInfo:
    """Find Conv/Gemm/MatMul nodes with a constant weight; compute per-sample FLOPs from inferred shapes."""
    inits = {i.name: i for i in model.graph.initializer}
    shapes = _shapes(model)
    layers = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if not node.name:
            raise ModelError(f"a {node.op_type} node has no name: re-export the model so every node is named")
        w = numpy_helper.to_array(inits[node.input[1]])
        out_shape = shapes.get(node.output[0], ((), 0))[0][1:]
        if not out_shape or any(d <= 0 for d in out_shape):
            raise ModelError(
                f"shape inference could not size the output of {node.name}: give the model static "
                "non-batch input dimensions"
            )
        per_out = int(np.prod(out_shape))
        if node.op_type == "Conv":
            group = _attr(node, "group", 1)
            macs = per_out * int(np.prod(w.shape[1:]))
            axis, depthwise = 0, group > 1 and group == w.shape[0] and w.shape[1] == 1
        elif node.op_type == "Gemm":
            trans_b = _attr(node, "transB", 0)
            k = w.shape[1] if trans_b else w.shape[0]
            macs, axis, depthwise = per_out * k, (0 if trans_b else 1), False
        else:  # MatMul with a constant right-hand side [K, N]
            macs, axis, depthwise = per_out * w.shape[-2], w.ndim - 1, False
        layers.append(
            LayerInfo(node.name, node.op_type, node.input[0], node.input[1], node.output[0],
                      tuple(w.shape), tuple(out_shape), axis, depthwise, 2 * macs)
        )  # fmt: skip
    if not layers:
        raise ModelError("the model has no quantizable layer (Conv, Gemm or MatMul with constant weights)")
    graph_inputs = [i.name for i in model.graph.input if i.name not in inits]
    produced = [o for n in model.graph.node for o in n.output if o]
    float_tensors = tuple(
        t for t in dict.fromkeys(graph_inputs + produced)
        if t in shapes and shapes[t][1] == onnx.TensorProto.FLOAT
    )  # fmt: skip
    return GraphInfo(tuple(layers), float_tensors)
