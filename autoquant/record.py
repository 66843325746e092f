"""The record file (DESIGN.md §4): every scale and zero point of an exported model, and how it was chosen.

Written from the built QDQ model itself (not from what we meant to build), and able to rebuild it:
`apply` feeds the recorded activation parameters back into the same builder, so the outputs match
exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import PlanError
from .evaluate.executed import ExecutedLayer
from .fileio import atomic_write_bytes
from .graph.layers import GraphInfo
from .quantize.build import ActivationParams
from .quantize.modes.static import tensor_algorithms
from .quantize.plan import LayerChoice, QuantPlan
from .versions import versions

FORMAT_VERSION = 1


@dataclass(frozen=True)
class WeightRecord:
    bits: int
    granularity: str
    scale_w: list[float]  # one per output channel, or one
    offset_w: list[int]


@dataclass(frozen=True)
class DataRecord:
    bits: int
    algorithm: str
    scale_d: float
    offset_d: int


@dataclass(frozen=True)
class LayerRecord:
    name: str
    op_type: str
    quantized: bool
    depthwise: bool
    flops: int
    weight: WeightRecord | None = None
    data: DataRecord | None = None
    kernel: str = ""  # what onnxruntime ran for the layer when the record was made (e.g. QLinearConv, Conv)


@dataclass(frozen=True)
class Record:
    model_sha256: str
    activation_type: str
    layers: list[LayerRecord]
    # Every quantized activation tensor (layer inputs, outputs and glue ops): what `apply` needs to be exact.
    activations: dict[str, dict[str, Any]]
    objectives: dict[str, float] = field(default_factory=dict)
    source_model: str = ""  # where the FP32 model was when the record was made: `apply` needs it
    weight_range: str = "full"  # "reduced": 8-bit weights kept in [-64, 64] (quantize/weight_range.py)
    unquantized_flops: int = 0  # compute the engine leaves float (attention MatMuls, LSTM, …), for bitops
    format_version: int = FORMAT_VERSION
    autoquant_version: str = ""
    onnxruntime_version: str = ""
    onnx_version: str = ""

    def plan(self) -> QuantPlan:
        choices = []
        for layer in self.layers:
            if layer.quantized and layer.weight and layer.data:
                choices.append((layer.name, LayerChoice(True, layer.weight.granularity, layer.data.algorithm,
                                                        layer.weight.bits, layer.data.bits)))  # fmt: skip
            else:
                choices.append((layer.name, LayerChoice(quantize=False)))
        return QuantPlan(tuple(choices))

    def activation_params(self) -> dict[str, ActivationParams]:
        return {t: ActivationParams(float(a["scale"]), int(a["zero_point"])) for t, a in self.activations.items()}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path: Path) -> Path:
        return atomic_write_bytes(path, self.to_json().encode())

    @classmethod
    def load(cls, path: Path) -> Record:
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"record file {path} not found")
        try:
            raw = json.loads(path.read_text())
            if raw.get("format_version") != FORMAT_VERSION:
                raise PlanError(
                    f"{path} has record format {raw.get('format_version')}; this autoquant reads {FORMAT_VERSION}"
                )
            layers = [
                LayerRecord(**{**lr, "weight": lr["weight"] and WeightRecord(**lr["weight"]),
                               "data": lr["data"] and DataRecord(**lr["data"])})
                for lr in raw.pop("layers")
            ]  # fmt: skip
            return cls(layers=layers, **raw)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise PlanError(f"{path} is not an autoquant record file ({exc.__class__.__name__}: {exc})") from exc


def _number(value: Any, where: str, *, positive: bool = False, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise PlanError(f"{where} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not np.isfinite(value) or (positive and value <= 0):
        raise PlanError(f"{where} must be {'a positive' if positive else 'a'} finite number, got {value!r}")
    return value


def _zero_point(value: Any, where: str, qtype: str) -> None:
    lo, hi = {"uint8": (0, 255), "int8": (-128, 127)}[qtype]
    if not lo <= _number(value, where, integer=True) <= hi:
        raise PlanError(f"{where} {value} is outside the {qtype} range [{lo}, {hi}]")


def validate_record(record: Record, model: onnx.ModelProto, graph: GraphInfo, where: str) -> None:
    """Check a record completely against the model before anything is built from it: a record with a
    zero or negative scale, a wrong number of channel scales or a missing tensor builds a broken model
    that still loads and runs."""
    if record.activation_type not in ("uint8", "int8"):
        raise PlanError(f"{where}: activation_type {record.activation_type!r} must be uint8 or int8")
    if isinstance(record.unquantized_flops, bool) or not isinstance(record.unquantized_flops, int) or record.unquantized_flops < 0:
        raise PlanError(f"{where}: unquantized_flops must be a non-negative integer, got {record.unquantized_flops!r}")
    if record.weight_range not in ("full", "reduced"):
        raise PlanError(f"{where}: weight_range {record.weight_range!r} must be full or reduced")
    if [lr.name for lr in record.layers] != list(graph.names):
        raise PlanError(f"{where} lists layers that do not match the model's quantizable layers")
    for lr, info in zip(record.layers, graph.layers):
        at = f"{where}: layer {lr.name}"
        if not isinstance(lr.quantized, bool):
            raise PlanError(f"{at}: 'quantized' must be true or false, got {lr.quantized!r}")
        if not lr.quantized:
            continue
        if not isinstance(lr.weight, WeightRecord) or not isinstance(lr.data, DataRecord):
            raise PlanError(f"{at} is quantized but has no {'weight' if not isinstance(lr.weight, WeightRecord) else 'data'} entry")
        w = lr.weight
        if w.bits not in (8, 4) or w.granularity not in ("per_tensor", "per_channel"):
            raise PlanError(f"{at}: weight bits {w.bits!r} / granularity {w.granularity!r} are not 8|4 / per_tensor|per_channel")
        count = info.out_channels if w.granularity == "per_channel" else 1
        if not isinstance(w.scale_w, list) or len(w.scale_w) != count or not isinstance(w.offset_w, list) \
                or len(w.offset_w) != count:
            raise PlanError(f"{at}: {w.granularity} weights need {count} scale_w and offset_w values")
        for i, (s, z) in enumerate(zip(w.scale_w, w.offset_w)):
            _number(s, f"{at}: scale_w[{i}]", positive=True)
            _number(z, f"{at}: offset_w[{i}]", integer=True)
        _number(lr.data.scale_d, f"{at}: scale_d", positive=True)
        _zero_point(lr.data.offset_d, f"{at}: offset_d", record.activation_type)
    if not isinstance(record.activations, dict):
        raise PlanError(f"{where}: 'activations' must map tensor names to scale and zero_point")
    missing = sorted(set(tensor_algorithms(model, graph, record.plan())) - set(record.activations))
    if missing:
        raise PlanError(f"{where}: activations has no entry for {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                        + ", which the plan quantizes")  # fmt: skip
    for tensor, entry in record.activations.items():
        if not isinstance(entry, dict) or not {"scale", "zero_point"} <= set(entry):
            raise PlanError(f"{where}: activations[{tensor!r}] must have scale and zero_point")
        _number(entry["scale"], f"{where}: activations[{tensor!r}].scale", positive=True)
        _zero_point(entry["zero_point"], f"{where}: activations[{tensor!r}].zero_point", record.activation_type)


def _qparams(qmodel: onnx.ModelProto, tensor: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Scale and zero point of the DequantizeLinear that produces `tensor`, if any."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    for node in qmodel.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == tensor:
            return numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])
    return None


def make_record(
    qmodel: onnx.ModelProto,
    graph: GraphInfo,
    plan: QuantPlan,
    activations: dict[str, ActivationParams],
    algorithms: dict[str, str],
    *,
    model_sha256: str,
    activation_type: str,
    objectives: dict[str, float] | None = None,
    source_model: str = "",
    executed: list[ExecutedLayer] = (),
    weight_range: str = "full",
) -> Record:
    nodes = {n.name: n for n in qmodel.graph.node}
    kernels = {e.name: e.kernel for e in executed}
    layers = []
    for info in graph.layers:
        choice = plan[info.name]
        weight = data = None
        if choice.quantize:
            node = nodes[info.name]
            w = _qparams(qmodel, node.input[1])
            d = _qparams(qmodel, node.input[0])
            if w is None or d is None:
                raise PlanError(f"layer {info.name} was not quantized by onnxruntime; cannot record it")
            weight = WeightRecord(choice.weight_bits, choice.weight_granularity,
                                  np.atleast_1d(w[0]).astype(float).tolist(),
                                  np.atleast_1d(w[1]).astype(int).tolist())  # fmt: skip
            data = DataRecord(choice.activation_bits, choice.activation_algorithm,
                              float(np.asarray(d[0]).reshape(())), int(np.asarray(d[1]).reshape(())))  # fmt: skip
        layers.append(LayerRecord(info.name, info.op_type, choice.quantize, info.depthwise, info.flops, weight, data,
                                  kernels.get(info.name, "")))  # fmt: skip
    acts = {t: {"scale": p.scale, "zero_point": p.zero_point, "algorithm": algorithms[t]} for t, p in activations.items()}
    return Record(model_sha256, activation_type, layers, acts, dict(objectives or {}), source_model, weight_range,
                  graph.unquantized_flops, **versions())
