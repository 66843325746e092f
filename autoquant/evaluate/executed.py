"""What onnxruntime really executes for each layer of a QDQ model: an integer kernel, or float.

A plan (and the record) says what each layer is meant to be; onnxruntime's graph transformers decide
what runs, and they can disagree (see quantize/float_layers.py). This module reads the graph a
session has optimized and names, per layer, the kernel that computes it.

Layers are traced through their weight initializers, which the integer fusions and the float
Conv/Gemm/MatMul fusions keep by name, rather than through node names, which they rewrite
(`…_token_12`, `<some output>_nchwc`). The per-layer view comes from a session with the default
optimizations except `NchwcTransformer`: that pass only re-lays out float convolutions (and renames
their weights), it never changes a layer's precision — `check_counts` confirms that on the graph
of the fully default session.
"""

from __future__ import annotations

import collections
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from ..quantize import modes

INTEGER_KERNELS = frozenset(
    {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
     "DynamicQuantizeMatMul", "MatMulNBits", "QAttention"}
)
FLOAT_KERNELS = frozenset({"Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"})
# A plan's layers: Conv, Gemm and MatMul with constant weights (graph/layers.py). ConvTranspose and recurrent cells
# are compute autoquant never quantizes (listed and costed as float): never counted against a plan's layers,
# reported on their own (other_compute) the same way everywhere.
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
OTHER_COMPUTE = ("ConvTranspose", "LSTM", "GRU", "RNN")
LAYER_FLOAT_KERNELS = FLOAT_KERNELS - {"ConvTranspose"}
LAYOUT_ONLY = ["NchwcTransformer"]


@dataclass(frozen=True)
class BuiltLayer:
    """A Conv/Gemm/MatMul of a built model with constant weights, as the file states it."""

    name: str
    op_type: str
    weight: str  # the initializer holding the weights (the quantized one when they are quantized)
    weight_bits: int  # 32 for float weights
    runs: str = ""  # the kernel kind the file asks for: "integer", "float" or "dequantized"
    label: str = ""  # how the layer is quantized, as `autoquant inspect` names it (LayerChoice.label)




@dataclass(frozen=True)
class ExecutedLayer:
    name: str
    kernel: str  # the optimized node that computes the layer ("" if none could be traced)
    integer: bool  # an integer kernel computes it
    float_weights: bool  # it reads the original float weights (not dequantized, not re-quantized)

    @property
    def mode(self) -> str:
        if not self.kernel:
            return "not found"
        if self.integer:
            return "integer"
        return "float" if self.float_weights else "float (dequantized weights)"


def built_layers(model: onnx.ModelProto) -> list[BuiltLayer]:
    """Every layer of a file with constant weights: quantized ones as the mode that built them reads them back
    (quantize/modes/), float ones as they are."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    layers = []
    for node in model.graph.node:
        if len(node.input) < 2:
            continue
        found = modes.recognize(node, inits, producers)
        if found is not None:
            layers.append(BuiltLayer(node.name, found.op_type, found.weight, found.bits, found.runs, found.label))
        elif node.op_type in WEIGHTED_OPS and node.input[1] in inits:
            layers.append(BuiltLayer(node.name, node.op_type, node.input[1], 32, "float", "float"))
    return layers


def optimized_graph(model: onnx.ModelProto | bytes, disabled: list[str] | None = None) -> onnx.ModelProto:
    """The graph a session with default options (the way a user deploys) runs, less `disabled` passes."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # it warns that an NCHWc-optimized file is machine specific: we only read it
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled or [])
        return onnx.load(opts.optimized_model_filepath)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out = collections.defaultdict(list)
    for node in graph.node:
        for t in node.input:
            out[t].append(node)
    return out


def trace(layers: list[BuiltLayer], optimized: onnx.ModelProto) -> list[ExecutedLayer]:
    """Follow each layer's weights into the optimized graph to the kernel that consumes them."""
    consumers = _consumers(optimized.graph)
    out = []
    for layer in layers:
        kernel, integer, float_weights = "", False, False
        for node in consumers.get(layer.weight, []):
            if node.op_type in INTEGER_KERNELS:
                kernel, integer = node.op_type, True
            elif node.op_type in FLOAT_KERNELS:
                kernel, float_weights = node.op_type, layer.weight_bits == 32
            elif node.op_type == "DequantizeLinear":  # weights dequantized at run time for a float kernel
                kernel = next((c.op_type for c in consumers.get(node.output[0], []) if c.op_type in FLOAT_KERNELS), "")
        if not kernel:
            # A float layer whose weights onnxruntime quantized itself: its initializer is gone, the
            # replacement is named after the node (WeightBiasQuantization: "<node>_weight_q").
            for node in optimized.graph.node:
                if node.op_type in INTEGER_KERNELS and any(t.startswith(f"{layer.name}_weight") for t in node.input):
                    kernel, integer = node.op_type, True
        out.append(ExecutedLayer(layer.name, kernel, integer, float_weights))
    return out


def kernel_counts(optimized: onnx.ModelProto) -> collections.Counter:
    """Integer and float compute kernels that read a constant weight (a layer), counted by kind."""
    ranks = {i.name: len(i.dims) for i in optimized.graph.initializer}
    producers = {o: n for n in optimized.graph.node for o in n.output}

    def constant(t: str) -> bool:
        p = producers.get(t)
        return ranks.get(t, 0) >= 2 or (p is not None and p.op_type == "DequantizeLinear" and ranks.get(p.input[0], 0) >= 2)

    counts: collections.Counter = collections.Counter()
    for node in optimized.graph.node:
        if node.op_type in INTEGER_KERNELS and any(constant(t) for t in node.input[1:]):
            counts["integer"] += 1
        elif node.op_type in LAYER_FLOAT_KERNELS and len(node.input) > 1 and constant(node.input[1]):
            counts["float"] += 1
    return counts


def count_disagreement(intended: dict[str, str], optimized: onnx.ModelProto) -> str | None:
    """The cheap check for every trial, on the graph its own session optimized: one integer kernel per layer
    meant to run integer and one float kernel per other layer, or a sentence saying what differs."""
    want = collections.Counter("integer" if runs == "integer" else "float" for runs in intended.values())
    got = kernel_counts(optimized)
    if got["integer"] == want["integer"] and got["float"] == want["float"]:
        return None
    return (f"onnxruntime runs {got['integer']} integer and {got['float']} float kernels for a plan with "
            f"{want['integer']} integer and {want['float']} other layers")


def executed_layers(model: onnx.ModelProto) -> list[ExecutedLayer]:
    """Per layer, what a default onnxruntime session runs (checked against the fully default graph)."""
    data = model.SerializeToString()
    traced = trace(built_layers(model), optimized_graph(data, LAYOUT_ONLY))
    full = kernel_counts(optimized_graph(data))
    seen = collections.Counter("integer" if e.integer else "float" for e in traced if e.kernel)
    if full["integer"] != seen["integer"]:
        raise RuntimeError(f"the default session runs {full['integer']} integer kernels where the traced graph "
                           f"has {seen['integer']}: this onnxruntime's layout passes change precision")
    return traced


def disagreements(intended: dict[str, str], executed: list[ExecutedLayer]) -> list[str]:
    """One line per layer whose executed kernel contradicts the kernel kind it is meant to run
    (LayerChoice.runs: integer, float, or float on dequantized weights)."""
    lines = []
    for e in executed:
        runs = intended.get(e.name)
        if runs == "float" and not (e.kernel and not e.integer and e.float_weights):
            lines.append(f"{e.name}: meant to run float, runs {e.kernel or 'nothing traceable'} ({e.mode})")
        elif runs == "integer" and not e.integer:
            lines.append(f"{e.name}: meant to run an integer kernel, runs {e.kernel or 'nothing traceable'} ({e.mode})")
        elif runs == "dequantized" and (e.integer or not e.kernel):
            lines.append(f"{e.name}: meant to run float on dequantized weights, runs {e.kernel or 'nothing traceable'}")
    return lines


def intended(model: onnx.ModelProto) -> dict[str, BuiltLayer]:
    """What the file itself says of each layer, by name."""
    return {layer.name: layer for layer in built_layers(model)}


def other_compute(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(name, op type) of the compute no plan quantizes (ConvTranspose, LSTM, GRU, RNN): it runs float."""
    return [(n.name, n.op_type) for n in model.graph.node if n.op_type in OTHER_COMPUTE]


def record_disagreements(planned: dict[str, str], stored: dict[str, BuiltLayer]) -> list[str]:
    """One line per layer the file builds otherwise than its record says (LayerChoice.label against BuiltLayer.label:
    a static INT8 model under a record that says dynamic or int4, a float layer quantized, …)."""
    return [f"{name}: the record says {label}, the file builds it as {stored[name].label}"
            for name, label in planned.items() if name in stored and stored[name].label != label]
