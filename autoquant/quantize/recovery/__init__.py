"""Recovery without training, as per-layer choices of static INT8 (its choice's `bias_correction` and
`weight_rounding`): bias correction (bias.py) and adaptive rounding (rounding.py), computed from calibration data
once per study (tables.py) and applied when a model is built (substitute below) — the layer's float weights
replaced by their values on the grid rounded as learned, its bias by the corrected one — so onnxruntime's quantizer
writes exactly these integers and biases, and onnxruntime runs the same kernels as without them. A record stores
the rounding and the shift (record_fields below, through the static mode), and `apply` rebuilds the same bytes
from them (RecordedRecovery).
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
from .rounding import rounded_weight


class Recovery(Protocol):
    """Where the rounding masks and bias shifts come from: a study's tables, or a record."""

    def rounding(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray: ...

    def shift(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray: ...


ROUNDINGS = ("nearest", "adaptive")  # weight_rounding: round to nearest, or learned per weight (rounding.py)


def recovers(choice: LayerChoice) -> bool:
    return getattr(choice, "bias_correction", False) or getattr(choice, "weight_rounding", "nearest") != "nearest"


def recovered_weight(w: np.ndarray, layer: LayerInfo, choice: LayerChoice, weight_range: str,
                     recovery: Recovery) -> np.ndarray:
    """The layer's weights on the grid of `choice`, rounded as the recovery says (what the built model holds)."""
    scale, bounds = weight_scale(w, layer.channel_axis, choice.weight_granularity, choice.weight_bits, weight_range)
    return rounded_weight(w, scale, bounds, recovery.rounding(layer, choice))


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


def record_fields(layer: LayerInfo, choice: LayerChoice, recovery: Recovery | None) -> dict[str, Any]:
    """What a record keeps of a recovering layer: how each weight was rounded from its floor on the grid (packed
    bits, base64) and the shift per output channel added to its bias."""
    out: dict[str, Any] = {}
    if choice.weight_rounding != "nearest":
        mask = recovery.rounding(layer, choice).astype(np.uint8).ravel()
        out["rounding_mask"] = base64.b64encode(np.packbits(mask).tobytes()).decode()
    if choice.bias_correction:
        out["bias_shift"] = [float(v) for v in recovery.shift(layer, choice)]
    return out


def check_record_fields(extra: Mapping[str, Any], layer: LayerInfo, choice: LayerChoice, where: str) -> None:
    """A record's recovery entries of a layer, checked against it before anything is built from them."""
    wanted = {k for k, on in (("rounding_mask", choice.weight_rounding != "nearest"), ("bias_shift", choice.bias_correction))
              if on}
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

    def rounding(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        count = int(np.prod(layer.weight_shape))
        bits = np.unpackbits(np.frombuffer(base64.b64decode(self.recorded[layer.name]["rounding_mask"]), np.uint8))
        return bits[:count].reshape(layer.weight_shape)

    def shift(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        return np.array(self.recorded[layer.name]["bias_shift"], np.float32)
