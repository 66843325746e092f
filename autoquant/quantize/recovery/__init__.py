"""Recovery without training, as per-layer choices of static INT8 (`LayerChoice.bias_correction`,
`LayerChoice.weight_rounding`): bias correction (bias.py) and adaptive rounding (rounding.py), computed from
calibration data once per study (tables.py) and applied when a model is built (substitute below) — the layer's
float weights replaced by their values on the grid rounded as learned, its bias by the corrected one — so
onnxruntime's quantizer writes exactly these integers and biases, and onnxruntime runs the same kernels as
without them. A record stores the rounding and the shift (record.py), and `apply` rebuilds the same bytes.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...graph.layers import GraphInfo, LayerInfo, bias_add
from ..fake import weight_scale
from ..plan import LayerChoice, QuantPlan
from .rounding import rounded_weight


class Recovery(Protocol):
    """Where the rounding masks and bias shifts come from: a study's tables, or a record."""

    def rounding(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray: ...

    def shift(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray: ...


def recovers(choice: LayerChoice) -> bool:
    return choice.quantize and (choice.bias_correction or choice.weight_rounding != "nearest")


def recovered_weight(w: np.ndarray, layer: LayerInfo, choice: LayerChoice, weight_range: str,
                     recovery: Recovery) -> np.ndarray:  # fmt: skip
    """The layer's weights on the grid of `choice`, rounded as the recovery says (what the built model holds)."""
    scale, bounds = weight_scale(w, layer.channel_axis, choice.weight_granularity, choice.weight_bits, weight_range)
    return rounded_weight(w, scale, bounds, recovery.rounding(layer, choice))


def substitute(model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan, weight_range: str,
               recovery: Recovery | None) -> None:  # fmt: skip
    """Change `model` in place: each layer whose choice recovers reads its rounded weights and corrected bias
    from new initializers (named after the originals, so a record's rebuild names them alike); originals that no
    node reads any more are removed."""
    chosen = [(layer, plan[layer.name]) for layer in graph.layers if recovers(plan[layer.name])]
    if not chosen:
        return
    if recovery is None:
        raise ValueError("a plan with bias correction or adaptive rounding needs the recovery it was made with")
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for layer, choice in chosen:
        node = nodes[layer.name]
        if choice.weight_rounding != "nearest":
            w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
            name = f"{layer.weight}.{choice.weight_granularity}{choice.weight_bits}.{choice.weight_rounding}"
            _add(model, inits, recovered_weight(w, layer, choice, weight_range, recovery), name)
            node.input[1] = name
        if choice.bias_correction:
            _correct_bias(model, inits, node, layer, recovery.shift(layer, choice))
    used = {t for n in model.graph.node for t in n.input}
    keep = [i for i in model.graph.initializer if i.name in used or i.name in {o.name for o in model.graph.output}]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _add(model: onnx.ModelProto, inits: dict, value: np.ndarray, name: str) -> None:
    tensor = numpy_helper.from_array(value.astype(np.float32), name)
    model.graph.initializer.append(tensor)
    inits[name] = tensor


def _correct_bias(model: onnx.ModelProto, inits: dict, node: onnx.NodeProto, layer: LayerInfo, shift: np.ndarray) -> None:
    """Add `shift` (per output channel, in output units) to what the layer adds to its output."""
    if layer.bias_slot == "add":
        add, index = bias_add(model, node, inits, layer.out_channels)
        old = numpy_helper.to_array(inits[add.input[index]]).astype(np.float32)
        _add(model, inits, old + shift, f"{add.input[index]}.corrected")
        add.input[index] = f"{add.input[index]}.corrected"
        return
    beta = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "beta"), 1.0)
    if len(node.input) > 2 and node.input[2]:
        old = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        name = f"{node.input[2]}.corrected"
        _add(model, inits, (old + shift.reshape(old.shape[:-1] + (-1,)) / beta) if old.ndim else old + shift / beta, name)
        node.input[2] = name
    else:
        name = f"{layer.name}.bias.corrected"
        _add(model, inits, shift / beta, name)
        node.input.extend([""] * (2 - len(node.input)) + [name])
