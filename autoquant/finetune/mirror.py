"""The plan's fake-quantized copy of the model, read off the QDQ model the plan builds: every QuantizeLinear of that
model becomes a fake quantizer on the same tensor with the same scale and zero point (the layers' inputs, the
requantized outputs and the glue between them), every quantized layer's weights are put on the grid its choice
gives them (granularity, bits, weight range), computed from the weights as they train, as onnxruntime's quantizer
will compute it from the fine-tuned weights at export, and its bias on the int32 grid of input scale × weight
scale. Layers the plan keeps float stay float. torch's fake_quantize functions give the straight-through
gradient (zero outside the quantizer's range), as PyTorch's own QAT uses them.

A dynamic layer's input is quantized as DynamicQuantizeLinear does it, from the batch's own range (uint8, the range
widened to include 0), on that layer's edge only; its weights on the same symmetric grid, its bias float. int4
weight-only layers (MatMulNBits, rounded in blocks at build time) are not mirrored: a plan with one is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import PlanError
from ..graph.layers import GraphInfo, LayerInfo
from ..quantize import modes
from ..quantize.fake import dynamic_params, weight_scale
from ..quantize.plan import QuantPlan
from ..quantize.scales import ActivationParams
from .graph import GraphModule, Tensor

QRANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


@dataclass(frozen=True)
class ActivationQuantizer:
    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def __call__(self, x: Tensor) -> Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)


def activation_quantizers(qmodel: onnx.ModelProto, tensors: set[str]) -> dict[str, ActivationQuantizer]:
    """Tensor of the FP32 graph → the quantizer the QDQ model puts on it. The quantizer keeps a tensor's name where
    it can; where it renamed the producer's output (a graph output), the DequantizeLinear's output carries it."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    dq_of = {n.input[0]: n for n in qmodel.graph.node if n.op_type == "DequantizeLinear"}
    found: dict[str, ActivationQuantizer] = {}
    for q in (n for n in qmodel.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits):
        dq = dq_of.get(q.output[0])
        tensor = q.input[0] if q.input[0] in tensors else (dq.output[0] if dq is not None else "")
        if tensor not in tensors:
            raise PlanError(f"the QDQ model quantizes '{q.input[0]}', which the FP32 graph does not have: this plan "
                            "cannot be mirrored for fine-tuning")
        zp = inits[q.input[2]]
        quantizer = ActivationQuantizer(float(numpy_helper.to_array(inits[q.input[1]])),
                                        int(numpy_helper.to_array(zp)), *QRANGE[zp.data_type])
        if found.setdefault(tensor, quantizer) != quantizer:
            raise PlanError(f"the QDQ model quantizes '{tensor}' twice with different scales: this plan cannot be "
                            "mirrored for fine-tuning")
    return found


def quantized_constants(qmodel: onnx.ModelProto, constants: set[str]) -> dict[str, np.ndarray]:
    """The FP32 graph's constants (not trained) that the QDQ model reads through a DequantizeLinear — e.g. the
    constant operand of a quantized Add — as their dequantized values, by their FP32 name."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    out = {}
    for dq in (n for n in qmodel.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits):
        name = dq.output[0].removesuffix("_DequantizeLinear_Output")
        if name not in constants:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else 0.0
        if np.ndim(scale) == 1 and q.ndim > 1:
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        out[name] = ((q - zero) * scale).astype(np.float32)
    return out


def weight_grid(w: Tensor, layer: LayerInfo, granularity: str, bits: int,
                weight_range: str) -> tuple[Tensor, tuple[int, int]]:
    """The symmetric grid onnxruntime's quantizer puts `w` on (quantize/fake.py: weight_scale, on the weights as
    they are now): the scales, broadcastable to `w`, as constants of the step, and the integers' bounds."""
    scale, bounds = weight_scale(w.detach().numpy(), layer.channel_axis, granularity, bits, weight_range)
    return torch.from_numpy(np.asarray(scale)), bounds


def dynamic_quantize(x: Tensor) -> Tensor:
    """DynamicQuantizeLinear's uint8 from the tensor's own min and max (quantize/fake.py: dynamic_params); the
    range is a constant of the step."""
    p = dynamic_params(float(x.detach().min()), float(x.detach().max()))
    return torch.fake_quantize_per_tensor_affine(x, p.scale, int(min(max(p.zero_point, 0), 255)), 0, 255)


def _round_ste(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


class Mirror:
    """`module`: the GraphModule of `model` with the plan's fake quantizers on; its parameters are every layer's
    weight and bias (float layers' too: they adapt to the quantized ones around them)."""

    def __init__(self, model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan, qmodel: onnx.ModelProto,
                 weight_range: str, learn_scales: bool = False):
        """`learn_scales`: the activation quantizers' scales are parameters too, trained with the weights by LSQ's
        gradient (Esser et al., 2020: torch's learnable fake quantizer), their zero points kept."""
        self.mirrored = {n: modes.get(c.mode).mirrored(c) for n, c in plan.choices if c.quantize}
        other = [(n, plan[n].mode) for n, m in self.mirrored.items() if m is None]
        if other:
            can = " and ".join(m.name for m in modes.modes() if m.mirrored(m.choice()) is not None)
            raise PlanError(f"fine-tuning mirrors {can} layers, and layer '{other[0][0]}' is {other[0][1]}: fine-tune a "
                            f"plan without {other[0][1]} layers")
        nodes = {n.name: n for n in model.graph.node}
        inits = {i.name for i in model.graph.initializer}
        self.bias = {layer.name: nodes[layer.name].input[2] for layer in graph.layers
                     if len(nodes[layer.name].input) > 2 and nodes[layer.name].input[2] in inits}
        trainable = {layer.weight for layer in graph.layers} | set(self.bias.values())
        self.module = GraphModule(model, trainable)
        tensors = {t for n in model.graph.node for t in n.output} | {i.name for i in model.graph.input}
        self.activations = activation_quantizers(qmodel, tensors)
        for name, value in quantized_constants(qmodel, inits - trainable).items():
            self.module.constants[name] = torch.from_numpy(value)
        self.plan, self.weight_range = plan, weight_range
        self._weights = {layer.weight: layer for layer in graph.layers if plan[layer.name].quantize}
        by_name = {layer.name: layer for layer in graph.layers}
        self._biases = {b: by_name[name] for name, b in self.bias.items() if name in self.mirrored
                        and self.mirrored[name].bias_on_grid}
        self._dynamic = {name for name, m in self.mirrored.items() if m.runtime_input}
        self.module.hook = self._activation
        self.module.weight = self._weight
        self.module.consume = self._consume
        self._learned = {t: i for i, t in enumerate(sorted(self.activations))} if learn_scales else {}
        self.module.scales = nn.ParameterList(nn.Parameter(torch.tensor([self.activations[t].scale], dtype=torch.float32))
                                              for t in self._learned)

    def scale(self, tensor: str) -> float:
        """The activation scale of `tensor` now (the calibrated one, or as learnt)."""
        i = self._learned.get(tensor)
        return self.activations[tensor].scale if i is None else float(self.module.scales[i].detach()[0])

    def activation_params(self) -> dict[str, ActivationParams]:
        """The learnt scales with their zero points, by tensor (empty when the scales were not learnt)."""
        return {t: ActivationParams(float(np.float32(self.scale(t))), self.activations[t].zero_point) for t in self._learned}

    def _consume(self, node: onnx.NodeProto, index: int, x: Tensor) -> Tensor:
        return dynamic_quantize(x) if index == 0 and node.name in self._dynamic else x

    def _activation(self, name: str, x: Tensor) -> Tensor:
        quantizer = self.activations.get(name)
        if quantizer is None or not x.is_floating_point():
            return x
        i = self._learned.get(name)
        if i is None:
            return quantizer(x)
        scale = self.module.scales[i].abs().clamp_min(1e-12)
        zero = torch.tensor([float(quantizer.zero_point)])
        grad = 1.0 / math.sqrt(x.numel() * quantizer.qmax)  # LSQ's step-size gradient scale
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero, quantizer.qmin, quantizer.qmax, grad)

    def _grid(self, layer: LayerInfo) -> tuple[Tensor, tuple[int, int]]:
        m = self.mirrored[layer.name]
        w = self.module.parameter(layer.weight)
        return weight_grid(w, layer, m.weight_granularity, m.weight_bits, self.weight_range)

    def _weight(self, name: str, w: Tensor) -> Tensor:
        layer = self._weights.get(name)
        if layer is not None:
            scale, bounds = self._grid(layer)
            return self._on_grid(w, scale, bounds)
        layer = self._biases.get(name)
        if layer is not None and layer.input in self.activations:
            scale, _ = self._grid(layer)
            step = (self.scale(layer.input) * scale).reshape(-1)
            return _round_ste(w / step) * step
        return w

    @staticmethod
    def _on_grid(w: Tensor, scale: Tensor, bounds: tuple[int, int]) -> Tensor:
        """Rounded to the grid and clipped to its bounds, the gradient straight through inside them."""
        q = torch.clamp(_round_ste(w / scale), *bounds)
        return q * scale

    def weights(self) -> dict[str, np.ndarray]:
        """The trained FP32 weights and biases, by initializer name."""
        return {n: self.module.parameter(n).detach().numpy().copy() for n in self.module.trainable}
