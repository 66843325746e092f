"""Compute ops of a pre-processed model with shapes and FLOPs: the quantizable layers (Conv, Gemm, MatMul
with a constant weight) and the compute the engine leaves float (attention MatMuls between activations,
LSTM / GRU / RNN, ConvTranspose), which is listed and costed, never silently dropped.

FLOPs are counted as 2 × MACs (one multiply and one add per MAC), per sample. Shapes come from ONNX
shape inference; where it cannot size a tensor (shapes computed from the data: dynamic height/width,
sequence length, a batch folded into another axis), from a real calibration batch (`observed`), and
the FLOPs are then those of the data's sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ..errors import ModelError

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
FLOAT_COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose", *RECURRENT_GATES)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    op_type: str
    input: str
    weight: str
    output: str
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]  # per sample, batch dimension dropped (as observed when inference could not tell)
    channel_axis: int  # output-channel axis of the weight, for per-channel scales
    depthwise: bool
    flops: int
    finite: bool = True  # no NaN or Inf in the weights: a layer that has some can only stay float
    # Where a correction of its output's mean can go: "bias" (Conv and Gemm: their bias input, added if absent),
    # "add" (a MatMul whose output only feeds an Add of a constant vector), "" (nowhere without a new op)
    bias_slot: str = "bias"

    @property
    def out_channels(self) -> int:
        return self.weight_shape[self.channel_axis]


@dataclass(frozen=True)
class ComputeOp:
    """Compute the engine does not quantize: it runs float and counts 32 × 32 in bitops."""

    name: str
    op_type: str
    flops: int


@dataclass(frozen=True)
class GraphInfo:
    layers: tuple[LayerInfo, ...]
    float_tensors: tuple[str, ...]  # every float activation (not initializer): calibration candidates
    float_ops: tuple[ComputeOp, ...] = ()
    observed: bool = False  # some shapes were taken from a calibration batch

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers) + self.unquantized_flops

    @property
    def unquantized_flops(self) -> int:
        return sum(op.flops for op in self.float_ops)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)


class ShapesUnknown(ModelError):
    """Shape inference could not size some compute op: the caller may observe the shapes on real data."""

    def __init__(self, tensors: list[str], where: str):
        super().__init__(f"shape inference could not size the output of {where} ({len(tensors)} tensor(s)): give the "
                         "model static non-batch input dimensions, or calibration data to observe them")
        self.tensors = tensors


Dims = tuple  # of int (known), str (symbolic) or None (unknown)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[Dims, int]]:
    inferred = shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            out[vi.name] = (None, tt.elem_type)
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out[vi.name] = (dims, tt.elem_type)
    return out


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Sizer:
    """Per-sample element counts of tensors: static when inference knows every non-batch dimension and the
    leading one is the model's batch, else from the observed batch."""

    def __init__(self, shapes, batch_dims: set, observed: dict[str, tuple[int, ...]] | None, batch: int):
        self.shapes, self.batch_dims, self.observed, self.batch = shapes, batch_dims, observed, batch
        self.unknown: list[str] = []

    def _is_batch(self, dim) -> bool:
        """The model's batch, or an expression symbolic inference derived from it alone ("floor(1.0*batch)"
        after a Resize that scales every axis)."""
        return dim in self.batch_dims or (isinstance(dim, str) and any(
            re.fullmatch(rf"[\w.()*+\- ]*\b{re.escape(b)}\b[\w.()*+\- ]*", dim) for b in self.batch_dims))

    def per_sample(self, tensor: str) -> tuple[float, tuple[int, ...]]:
        """(elements per sample, per-sample shape) of `tensor`; (nan, ()) and remembered when unknown."""
        dims = self.shapes.get(tensor, (None, 0))[0]
        static = dims is not None and len(dims) >= 1 and all(isinstance(d, int) and d > 0 for d in dims[1:]) and (
            self._is_batch(dims[0]) or dims[0] == 1 or len(dims) == 1)
        if static:
            rest = tuple(dims[1:]) if len(dims) > 1 else tuple(dims)
            return float(np.prod(rest)), rest
        if self.observed is not None and tensor in self.observed:
            shape = self.observed[tensor]
            return float(np.prod(shape)) / self.batch, tuple(shape[1:])
        self.unknown.append(tensor)
        return float("nan"), ()


def bias_add(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict, channels: int) -> tuple[onnx.NodeProto, int] | None:
    """The Add that is the only reader of a MatMul's output and adds a constant vector of its `channels` (a
    Linear layer exported as MatMul + Add), and which of its inputs the constant is."""
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type != "Add" or node.output[0] in (o.name for o in model.graph.output):
        return None
    add = readers[0]
    for i, t in enumerate(add.input):
        if t != node.output[0] and t in inits and tuple(inits[t].dims) == (channels,):
            return add, i
    return None


def _bias_slot(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict, channels: int) -> str:
    if node.op_type == "MatMul":
        return "add" if bias_add(model, node, inits, channels) is not None else ""
    if len(node.input) < 3 or not node.input[2]:
        return "bias"  # none yet: one is added
    bias = inits.get(node.input[2])
    return "bias" if bias is not None and tuple(bias.dims) in ((), (channels,), (1, channels)) else ""


def analyze(model: onnx.ModelProto, observed: dict[str, tuple[int, ...]] | None = None, batch: int = 1,
            sized: bool = True) -> GraphInfo:
    """Find the compute ops; quantizable layers are Conv/Gemm/MatMul nodes with a constant weight. With
    `sized` False, FLOPs that shapes cannot tell are left unknown instead of refused (rebuilding from a
    record needs the layers, not their cost)."""
    inits = {i.name: i for i in model.graph.initializer}
    shapes = _shapes(model)
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    batch_dims = {i.type.tensor_type.shape.dim[0].dim_param for i in graph_inputs
                  if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param}
    sizer = _Sizer(shapes, batch_dims, observed, batch)
    layers, float_ops = [], []
    for node in model.graph.node:
        if node.op_type not in FLOAT_COMPUTE_OPS:
            continue
        if not node.name:
            raise ModelError(f"a {node.op_type} node has no name: re-export the model so every node is named")
        per_out, out_shape = sizer.per_sample(node.output[0])
        const_weight = len(node.input) >= 2 and node.input[1] in inits
        if node.op_type in QUANTIZABLE_OPS and const_weight:
            w = numpy_helper.to_array(inits[node.input[1]])
            if node.op_type == "Conv":
                group = _attr(node, "group", 1)
                k, axis = int(np.prod(w.shape[1:])), 0
                depthwise = group > 1 and group == w.shape[0] and w.shape[1] == 1
            elif node.op_type == "Gemm":
                trans_b = _attr(node, "transB", 0)
                k, axis, depthwise = (w.shape[1] if trans_b else w.shape[0]), (0 if trans_b else 1), False
            else:  # MatMul with a constant right-hand side [..., K, N]
                k, axis, depthwise = w.shape[-2], w.ndim - 1, False
            layers.append(LayerInfo(node.name, node.op_type, node.input[0], node.input[1], node.output[0], tuple(w.shape),
                                    out_shape, axis, depthwise, _flops(per_out * k),
                                    bool(np.isfinite(w).all()) if np.issubdtype(w.dtype, np.floating) else True,
                                    _bias_slot(model, node, inits, w.shape[axis])))
        else:
            float_ops.append(ComputeOp(node.name, node.op_type, _float_op_flops(node, per_out, shapes, inits, sizer)))
    if sizer.unknown and sized:
        raise ShapesUnknown(sorted(set(sizer.unknown)), next(iter(sizer.unknown)))
    if not layers:
        raise ModelError("the model has no quantizable layer (Conv, Gemm or MatMul with constant weights)")
    produced = [o for n in model.graph.node for o in n.output if o]
    float_tensors = tuple(
        t for t in dict.fromkeys([i.name for i in graph_inputs] + produced)
        if t in shapes and shapes[t][1] == onnx.TensorProto.FLOAT
    )
    return GraphInfo(tuple(layers), float_tensors, tuple(float_ops), observed is not None)


def _flops(macs: float) -> int:
    return round(2 * macs) if np.isfinite(macs) else 0


def _reduction(tensor: str, axis: int, shapes, inits, sizer: _Sizer) -> float:
    """Length of `tensor` along `axis` (from inference, the initializer, or the observed batch)."""
    if tensor in inits:
        return float(inits[tensor].dims[axis])
    dims = shapes.get(tensor, (None, 0))[0]
    if dims is not None and len(dims) > abs(axis) - (axis < 0) and isinstance(dims[axis], int) and dims[axis] > 0:
        return float(dims[axis])
    if sizer.observed is not None and tensor in sizer.observed:
        return float(sizer.observed[tensor][axis])
    sizer.unknown.append(tensor)
    return float("nan")


def _rank(tensor: str, shapes, inits) -> int:
    if tensor in inits:
        return len(inits[tensor].dims)
    dims = shapes.get(tensor, (None, 0))[0]
    return len(dims) if dims is not None else 0


def _float_op_flops(node: onnx.NodeProto, per_out: float, shapes, inits, sizer: _Sizer) -> int:
    if node.op_type in RECURRENT_GATES:
        # Per time step and direction: gates × hidden × (input + hidden) MACs; the output Y is
        # [seq, directions, batch, hidden], so per_out already counts steps × directions × hidden.
        hidden = _attr(node, "hidden_size", 1)
        return _flops(per_out * RECURRENT_GATES[node.op_type] * (_reduction(node.input[1], 2, shapes, inits, sizer) + hidden))
    if node.op_type in ("ConvTranspose", "Conv"):
        # The weight is [C_in, C_out / group, k...] (ConvTranspose, MACs per input element) or
        # [C_out, C_in / group, k...] (Conv without a constant weight, MACs per output element).
        dims = [_reduction(node.input[1], a, shapes, inits, sizer) for a in range(_rank(node.input[1], shapes, inits))]
        if node.op_type == "Conv":
            return _flops(per_out * float(np.prod(dims[1:])))
        per_in, _ = sizer.per_sample(node.input[0])
        return _flops(per_in * float(np.prod(dims[1:])))
    if node.op_type == "Gemm":
        return _flops(per_out * _reduction(node.input[0], 0 if _attr(node, "transA", 0) else 1, shapes, inits, sizer))
    return _flops(per_out * _reduction(node.input[0], -1, shapes, inits, sizer))  # MatMul: [..., M, K] x [..., K, N]
