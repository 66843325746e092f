"""The model's ONNX graph, run by PyTorch: the one function fine-tuning trains.

It runs the pre-processed FP32 graph the quantizer builds every plan from (batch norms already folded into their
convolutions, exactly as in every exported model), node by node, with the weights of the quantized layers as
trainable parameters, and calls a hook on every tensor it produces, so the plan's fake quantizers (mirror.py) sit
on the same tensors, by name, as the QDQ model's QuantizeLinear nodes. onnx2torch converts a graph to torch too,
but into modules whose tensors lose their ONNX names, which is what the quantizers are found by; and the user's
own torch module would need its layers matched to the graph's nodes and its batch norms folded as the exporter
did. A graph with an operator outside OPS is refused with its name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from ..errors import PlanError

Tensor = torch.Tensor


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _conv(node, x, w, b=None):
    a = _attrs(node)
    dims = w.dim() - 2
    pads = a.get("pads", [0] * 2 * dims)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise PlanError(f"Conv node '{node.name}' uses auto_pad {a['auto_pad']!r}: fine-tuning needs explicit pads")
    begin, end = pads[:dims], pads[dims:]
    if begin != end:
        x = F.pad(x, [p for i in reversed(range(dims)) for p in (begin[i], end[i])])
        begin = [0] * dims
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return conv(x, w, b, a.get("strides", [1] * dims), begin, a.get("dilations", [1] * dims), a.get("group", 1))


def _gemm(node, a_, b_, c=None):
    a = _attrs(node)
    a_ = a_.transpose(-1, -2) if a.get("transA", 0) else a_
    b_ = b_.transpose(-1, -2) if a.get("transB", 0) else b_
    y = a.get("alpha", 1.0) * (a_ @ b_)
    return y if c is None else y + a.get("beta", 1.0) * c


def _clip(node, x, lo=None, hi=None):
    a = _attrs(node)
    lo = lo if lo is not None else a.get("min")
    hi = hi if hi is not None else a.get("max")
    return torch.clamp(x, None if lo is None else float(lo), None if hi is None else float(hi))


def _pool(node, x, kind: str):
    a = _attrs(node)
    dims = x.dim() - 2
    pads = a.get("pads", [0] * 2 * dims)
    if pads[:dims] != pads[dims:]:
        raise PlanError(f"{node.op_type} node '{node.name}' pads unevenly: fine-tuning cannot run it")
    kernel, strides = a["kernel_shape"], a.get("strides", [1] * dims)
    if kind == "max":
        return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1](x, kernel, strides, pads[:dims], a.get("dilations", [1] * dims), bool(a.get("ceil_mode", 0)))
    return (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1](x, kernel, strides, pads[:dims], bool(a.get("ceil_mode", 0)),
                                                                bool(a.get("count_include_pad", 0)))


def _slice(node, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) or list(range(len(starts)))
    steps = _ints(steps) or [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise PlanError(f"Slice node '{node.name}' steps backwards: fine-tuning cannot run it")
        index[ax] = slice(s, min(e, x.shape[ax]), st)
    return x[tuple(index)]


def _pad(node, x, pads=None, value=None, axes=None):
    a = _attrs(node)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _ints(pads) if pads is not None else a["pads"]
    dims = _ints(axes) or list(range(x.dim()))
    n = len(dims)
    full = [0] * 2 * x.dim()
    for i, d in enumerate(dims):
        full[d], full[x.dim() + d] = pads[i], pads[n + i]
    flat = [p for d in reversed(range(x.dim())) for p in (full[d], full[x.dim() + d])]
    return F.pad(x, flat, mode={"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode],
                 value=float(value) if value is not None and mode == "constant" else None)


def _reshape(node, x, shape):
    shape = _ints(shape)
    if not _attrs(node).get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(node, x):
    axis = _attrs(node).get("axis", 1)
    axis = axis if axis >= 0 else x.dim() + axis
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _unsqueeze(node, x, axes=None):
    axes = _ints(axes) or _attrs(node)["axes"]
    for ax in sorted(a if a >= 0 else a + x.dim() + len(axes) for a in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(node, x, axes=None):
    axes = _ints(axes) or _attrs(node).get("axes")
    return x.squeeze() if axes is None else x.squeeze(tuple(axes))


def _layer_norm(node, x, scale, bias=None):
    a = _attrs(node)
    axis = a.get("axis", -1)
    axis = axis if axis >= 0 else x.dim() + axis
    return F.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))


def _batch_norm(node, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, _attrs(node).get("epsilon", 1e-5))


def _reduce(fn: Callable) -> Callable:
    def run(node, x, axes=None):
        a = _attrs(node)
        axes = _ints(axes) or a.get("axes") or list(range(x.dim()))
        return fn(x, tuple(axes), bool(a.get("keepdims", 1)))

    return run


def _resize(node, x, roi=None, scales=None, sizes=None):
    a = _attrs(node)
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ct = a.get("coordinate_transformation_mode", b"half_pixel")
    ct = ct.decode() if isinstance(ct, bytes) else ct
    size = _ints(sizes)[2:] if sizes is not None and sizes.numel() else None
    factors = [float(s) for s in scales.reshape(-1).tolist()[2:]] if size is None else None
    if mode == "linear" and ct in ("half_pixel", "pytorch_half_pixel") and x.dim() == 4:
        return F.interpolate(x, size=size, scale_factor=factors, mode="bilinear", align_corners=False)
    if mode == "nearest" and ct == "asymmetric" and a.get("nearest_mode", b"floor") in (b"floor", "floor"):
        return F.interpolate(x, size=size, scale_factor=factors, mode="nearest")
    raise PlanError(f"Resize node '{node.name}' ({mode}, {ct}) is not one fine-tuning can run")


def _gather(node, x, index):
    axis = _attrs(node).get("axis", 0)
    axis = axis if axis >= 0 else x.dim() + axis
    index = index.long()
    index = torch.where(index < 0, index + x.shape[axis], index)
    out = torch.index_select(x, axis, index.reshape(-1))
    return out.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1 :]))


CAST = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
        onnx.TensorProto.BOOL: torch.bool, onnx.TensorProto.DOUBLE: torch.float64}

OPS: dict[str, Callable] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda node, a, b: a @ b,
    "Relu": lambda node, x: F.relu(x),
    "LeakyRelu": lambda node, x: F.leaky_relu(x, _attrs(node).get("alpha", 0.01)),
    "Clip": _clip,
    "Sigmoid": lambda node, x: torch.sigmoid(x),
    "HardSigmoid": lambda node, x: torch.clamp(_attrs(node).get("alpha", 0.2) * x + _attrs(node).get("beta", 0.5), 0, 1),
    "HardSwish": lambda node, x: F.hardswish(x),
    "Tanh": lambda node, x: torch.tanh(x),
    "Erf": lambda node, x: torch.erf(x),
    "Sqrt": lambda node, x: torch.sqrt(x),
    "Exp": lambda node, x: torch.exp(x),
    "Add": lambda node, a, b: a + b,
    "Sub": lambda node, a, b: a - b,
    "Mul": lambda node, a, b: a * b,
    "Div": lambda node, a, b: a / b,
    "Pow": lambda node, a, b: torch.pow(a, b),
    "GlobalAveragePool": lambda node, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda node, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "AveragePool": lambda node, x: _pool(node, x, "avg"),
    "MaxPool": lambda node, x: _pool(node, x, "max"),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda node, x: x.permute(_attrs(node).get("perm", list(reversed(range(x.dim()))))),
    "Slice": _slice,
    "Pad": _pad,
    "Concat": lambda node, *xs: torch.cat(xs, _attrs(node)["axis"]),
    "Softmax": lambda node, x: torch.softmax(x, _attrs(node).get("axis", -1)),
    "Identity": lambda node, x: x,
    "Dropout": lambda node, x, *rest: x,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "ReduceMean": _reduce(lambda x, axes, keep: x.mean(dim=axes, keepdim=keep)),
    "ReduceSum": _reduce(lambda x, axes, keep: x.sum(dim=axes, keepdim=keep)),
    "ReduceMax": _reduce(lambda x, axes, keep: x.amax(dim=axes, keepdim=keep)),
    "ReduceL2": _reduce(lambda x, axes, keep: torch.sqrt((x * x).sum(dim=axes, keepdim=keep))),
    "Gather": _gather,
    "Cast": lambda node, x: x.to(CAST[_attrs(node)["to"]]),
    "Expand": lambda node, x, shape: x * torch.ones(_ints(shape), dtype=x.dtype),
    "Neg": lambda node, x: -x,
    "Equal": lambda node, a, b: a == b,
    "Where": lambda node, c, a, b: torch.where(c, a, b),
    "Not": lambda node, x: ~x,
    "Shape": lambda node, x: torch.tensor(x.shape[_attrs(node).get("start", 0) : _attrs(node).get("end")], dtype=torch.int64),
    "Constant": lambda node: torch.from_numpy(np.array(numpy_helper.to_array(_attrs(node)["value"]))),
    "Resize": _resize,
}


class GraphModule(nn.Module):
    """The ONNX graph as a torch module: `forward(**inputs)` returns its outputs in order. `trainable` names the
    initializers that are parameters (the rest are constants); `hook(name, tensor)` sees every tensor the graph
    produces or takes as input, and what it returns is what the graph goes on with; `weight(name, tensor)` does
    the same for each trainable initializer; `consume(node, index, tensor)` for each input as one node reads it
    (what only that node's kernel does to it, e.g. quantize it at run time)."""

    def __init__(self, model: onnx.ModelProto, trainable: set[str]):
        super().__init__()
        graph = model.graph
        unknown = sorted({n.op_type for n in graph.node if n.op_type not in OPS or n.domain not in ("", "ai.onnx")})
        if unknown:
            node = next(n for n in graph.node if n.op_type in unknown)
            raise PlanError(f"fine-tuning cannot run the model's {node.op_type} node '{node.name}' (operators it runs: "
                            f"{', '.join(sorted(OPS))})")
        self.nodes = list(graph.node)
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in inits]
        self.outputs = [o.name for o in graph.output]
        self.trainable = sorted(trainable)
        self.params = nn.ParameterList(nn.Parameter(torch.from_numpy(np.array(inits[n], np.float32))) for n in self.trainable)
        self._index = {n: i for i, n in enumerate(self.trainable)}
        self.constants = {n: torch.from_numpy(np.array(v)) for n, v in inits.items() if n not in self._index}
        self.hook: Callable[[str, Tensor], Tensor] = lambda name, t: t
        self.weight: Callable[[str, Tensor], Tensor] = lambda name, t: t
        self.consume: Callable[[onnx.NodeProto, int, Tensor], Tensor] = lambda node, i, t: t

    def parameter(self, name: str) -> nn.Parameter:
        """The trainable initializer `name`."""
        return self.params[self._index[name]]

    def forward(self, **feeds: Tensor) -> list[Tensor]:
        env: dict[str, Tensor] = dict(self.constants)
        for name in self.trainable:
            env[name] = self.weight(name, self.parameter(name))
        for name in self.inputs:
            env[name] = self.hook(name, feeds[name])
        for node in self.nodes:
            result = OPS[node.op_type](node, *(self.consume(node, k, env[i]) if i else None
                                               for k, i in enumerate(node.input)))
            outs = result if isinstance(result, tuple) else [result]
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = self.hook(name, value)
        return [env[o] for o in self.outputs]
