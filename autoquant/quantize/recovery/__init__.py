"""Recovery without training, as per-layer choices of static INT8 (its choice's `weight_clipping`,
`weight_rounding` and `bias_correction`): weight clipping by output error (clipping.py), adaptive rounding
(rounding.py) and bias correction (bias.py), computed from calibration data once per study (tables.py) and applied
when a model is built (substitute below) — the layer's float weights replaced by their values clipped and on the
grid rounded as learned, its bias by the corrected one — so onnxruntime's quantizer writes exactly these integers
and biases, and onnxruntime runs the same kernels as without them. A record stores the bounds, the rounding and the
shift (record_fields below, through the static mode), and `apply` rebuilds the same bytes from them
(RecordedRecovery).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import PlanError
from ...graph.layers import GraphInfo, LayerInfo, bias_add
from ..fake import weight_scale
from ..plan import LayerChoice, QuantPlan
from .rounding import nearest_mask, rounded_weight


class Recovery(Protocol):
    """Where the rounding masks and bias shifts come from: a study's tables, or a record."""

    def clipping(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray: ...

    def rounding(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray: ...

    def shift(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray: ...


ROUNDINGS = ("nearest", "adaptive")  # weight_rounding: round to nearest, or learned per weight (rounding.py)
CLIPPINGS = ("none", "mse")  # weight_clipping: the grid from the largest weight, or clipped by output error (clipping.py)


def clips(choice: LayerChoice) -> bool:
    return getattr(choice, "weight_clipping", "none") != "none"


def reshapes_weights(choice: LayerChoice) -> bool:
    """Whether the built layer reads weights other than its FP32 ones (clipped, or rounded other than to nearest)."""
    return clips(choice) or getattr(choice, "weight_rounding", "nearest") != "nearest"


def recovers(choice: LayerChoice) -> bool:
    return getattr(choice, "bias_correction", False) or reshapes_weights(choice)


def clipped_weight(w: np.ndarray, layer: LayerInfo, choice: LayerChoice, recovery: Recovery) -> np.ndarray:
    """The layer's weights clipped to the choice's bounds (themselves where it does not clip)."""
    if not clips(choice):
        return w
    bound = recovery.clipping(layer, choice).astype(np.float32)
    if bound.size > 1:
        bound = bound.reshape([-1 if a == layer.channel_axis % w.ndim else 1 for a in range(w.ndim)])
    return np.clip(w, -bound, bound)


def recovered_weight(w: np.ndarray, layer: LayerInfo, choice: LayerChoice, weight_range: str,
                     recovery: Recovery) -> np.ndarray:
    """The layer's weights clipped and on the grid of `choice`, rounded as the recovery says (what the built model
    holds)."""
    w = clipped_weight(w, layer, choice, recovery)
    scale, bounds = weight_scale(w, layer.channel_axis, choice.weight_granularity, choice.weight_bits, weight_range)
    mask = nearest_mask(w, scale) if choice.weight_rounding == "nearest" else recovery.rounding(layer, choice)
    return rounded_weight(w, scale, bounds, mask)


def substitute(model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan, weight_range: str,
               recovery: Recovery | None) -> None:
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
        if reshapes_weights(choice):
            w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
            name = (f"{layer.weight}.{choice.weight_granularity}{choice.weight_bits}.{choice.weight_rounding}"
                    + (f".clip-{choice.weight_clipping}" if clips(choice) else ""))
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
    reader, index, value = corrected_bias(model, inits, node, layer, shift)
    name = f"{reader.input[index]}.corrected" if index < len(reader.input) and reader.input[index] \
        else f"{layer.name}.bias.corrected"
    _add(model, inits, value, name)
    if index < len(reader.input):
        reader.input[index] = name
    else:
        reader.input.extend([""] * (index - len(reader.input)) + [name])


def corrected_bias(model: onnx.ModelProto, inits: dict, node: onnx.NodeProto, layer: LayerInfo,
                   shift: np.ndarray) -> tuple[onnx.NodeProto, int, np.ndarray]:
    """(the node that adds the layer's bias, the index of its bias input, the bias with `shift` added): the Add after
    a MatMul, or the layer's own bias input (from zero where it has none; a Gemm's scaled by its beta)."""
    if layer.bias_slot == "add":
        add, index = bias_add(model, node, inits, layer.out_channels)
        return add, index, numpy_helper.to_array(inits[add.input[index]]).astype(np.float32) + shift
    beta = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "beta"), 1.0)
    if len(node.input) > 2 and node.input[2]:
        old = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        return node, 2, (old + shift.reshape(old.shape[:-1] + (-1,)) / beta) if old.ndim else old + shift / beta
    return node, 2, shift / beta


def recovered_values(model: onnx.ModelProto, graph: GraphInfo, plan: QuantPlan, weight_range: str,
                     recovery: Recovery) -> dict[str, np.ndarray]:
    """What `substitute` gives the plan's recovering layers, under the FP32 model's initializer names: their clipped
    and rounded weights, their corrected biases (a bias the layer does not have is left out). A float model holding
    these computes what the plan's QDQ model does but for its quantization: fine-tuning starts from it."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out: dict[str, np.ndarray] = {}
    for layer in graph.layers:
        choice = plan[layer.name]
        if not recovers(choice):
            continue
        if reshapes_weights(choice):
            w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
            out[layer.weight] = recovered_weight(w, layer, choice, weight_range, recovery)
        if choice.bias_correction:
            reader, index, value = corrected_bias(model, inits, nodes[layer.name], layer, recovery.shift(layer, choice))
            if index < len(reader.input) and reader.input[index] in inits:
                out[reader.input[index]] = value
    return out


def record_fields(layer: LayerInfo, choice: LayerChoice, recovery: Recovery | None) -> dict[str, Any]:
    """What a record keeps of a recovering layer: the bound its weights were clipped to (per channel, or one), how
    each weight was rounded from its floor on the grid (packed bits, base64) and the shift per output channel added
    to its bias."""
    out: dict[str, Any] = {}
    if clips(choice):
        out["clip_bounds"] = [float(v) for v in recovery.clipping(layer, choice)]
    if choice.weight_rounding != "nearest":
        mask = recovery.rounding(layer, choice).astype(np.uint8).ravel()
        out["rounding_mask"] = base64.b64encode(np.packbits(mask).tobytes()).decode()
    if choice.bias_correction:
        out["bias_shift"] = [float(v) for v in recovery.shift(layer, choice)]
    return out


def check_record_fields(extra: Mapping[str, Any], layer: LayerInfo, choice: LayerChoice, where: str) -> None:
    """A record's recovery entries of a layer, checked against it before anything is built from them."""
    wanted = {k for k, on in (("clip_bounds", clips(choice)), ("rounding_mask", choice.weight_rounding != "nearest"),
                              ("bias_shift", choice.bias_correction)) if on}
    if set(extra) != wanted:
        raise PlanError(f"{where}: its choice needs {', '.join(sorted(wanted)) or 'no recovery entries'}, the record has "
                        f"{', '.join(sorted(extra)) or 'none'}")
    if "rounding_mask" in extra:
        try:
            packed = base64.b64decode(extra["rounding_mask"], validate=True)
        except (ValueError, TypeError):
            raise PlanError(f"{where}: rounding_mask is not base64") from None
        if len(packed) != -(-int(np.prod(layer.weight_shape)) // 8):
            raise PlanError(f"{where}: rounding_mask must hold one bit per weight ({int(np.prod(layer.weight_shape))})")
    if "clip_bounds" in extra:
        bounds, count = extra["clip_bounds"], layer.out_channels if choice.weight_granularity == "per_channel" else 1
        if not isinstance(bounds, list) or len(bounds) != count:
            raise PlanError(f"{where}: clip_bounds needs {count} value(s)")
        for i, v in enumerate(bounds):
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v < 0:
                raise PlanError(f"{where}: clip_bounds[{i}] must be a finite number >= 0, got {v!r}")
    if "bias_shift" in extra:
        if not layer.bias_slot:
            raise PlanError(f"{where}: the layer has no bias to correct")
        shift = extra["bias_shift"]
        if not isinstance(shift, list) or len(shift) != layer.out_channels:
            raise PlanError(f"{where}: bias_shift needs {layer.out_channels} values")
        for i, v in enumerate(shift):
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                raise PlanError(f"{where}: bias_shift[{i}] must be a finite number, got {v!r}")


class RecordedRecovery:
    """The rounding and bias shifts a record holds (record_fields, by layer), for rebuilding its model."""

    def __init__(self, recorded: Mapping[str, Mapping[str, Any]]):
        self.recorded = recorded

    def clipping(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        return np.array(self.recorded[layer.name]["clip_bounds"], np.float32)

    def rounding(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        count = int(np.prod(layer.weight_shape))
        bits = np.unpackbits(np.frombuffer(base64.b64decode(self.recorded[layer.name]["rounding_mask"]), np.uint8))
        return bits[:count].reshape(layer.weight_shape)

    def shift(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        return np.array(self.recorded[layer.name]["bias_shift"], np.float32)
