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

from .errors import ConfigError, PlanError
from .evaluate.executed import ExecutedLayer
from .fileio import atomic_write_bytes
from .graph.layers import GraphInfo
from .quantize import modes
from .quantize.modes.static import dequantize_params, tensor_algorithms
from .quantize.plan import LayerChoice, QuantPlan
from .quantize.scales import ActivationParams
from .quantize.smoothing import Smoothing, smoothable
from .versions import versions

FORMAT_VERSION = 3
READS = (1, 2, 3)  # 2 added the layer's mode and int4 blocks (a version-1 record is all static); 3 added notes


@dataclass(frozen=True)
class WeightRecord:
    bits: int
    granularity: str  # per_tensor, per_channel, or per_block (int4)
    scale_w: list[float]  # one, one per output channel, or per block: [output channel][block] flattened
    offset_w: list[int]
    block_size: int = 0  # per_block: input channels per block


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
    data: DataRecord | None = None  # None for the dynamic and int4 modes: activations are quantized at run time
    kernel: str = ""  # what onnxruntime ran for the layer when the record was made (e.g. QLinearConv, Conv)
    mode: str = "static"  # a registered mode (quantize/modes/)
    accuracy_level: int = 0  # int4: MatMulNBits compute precision


    def choice(self) -> LayerChoice:
        if not (self.quantized and self.weight):
            return LayerChoice(quantize=False)
        mode = modes.get(self.mode)
        if mode.calibrated and self.data is None:
            raise PlanError(f"layer {self.name} is {self.mode} but has no data entry")
        w = self.weight
        return mode.from_record(w.bits, w.granularity, w.block_size, self.data.algorithm if self.data else "minmax",
                                self.accuracy_level)  # fmt: skip


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
    # SmoothQuant: per smoothed tensor of the FP32 model, its per-channel divisors (quantize/smoothing.py)
    smoothquant_alpha: float = 0.0
    smoothing: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what whoever deploys it should know (e.g. slower than FP32 here)
    format_version: int = FORMAT_VERSION
    autoquant_version: str = ""
    onnxruntime_version: str = ""
    onnx_version: str = ""

    def plan(self) -> QuantPlan:
        return QuantPlan(tuple((layer.name, layer.choice()) for layer in self.layers))

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
            if raw.get("format_version") not in READS:
                raise PlanError(f"{path} has record format {raw.get('format_version')}; this autoquant reads "
                                f"{' and '.join(map(str, READS))}")  # fmt: skip
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


def validate_smoothing(record: Record, graph: GraphInfo, where: str) -> None:
    """Check the record's SmoothQuant divisors against the FP32 model's layers, before they are applied."""
    if not isinstance(record.smoothing, dict):
        raise PlanError(f"{where}: smoothing must map tensors to per-channel divisors")
    if record.smoothing:
        _number(record.smoothquant_alpha, f"{where}: smoothquant_alpha", positive=True)
    groups = smoothable(graph)
    for tensor, divisors in record.smoothing.items():
        if tensor not in groups:
            raise PlanError(f"{where}: smoothing names {tensor!r}, which no MatMul/Gemm layer of the model reads")
        layer = groups[tensor][0]
        channels = layer.weight_shape[1 - layer.channel_axis]
        if not isinstance(divisors, list) or len(divisors) != channels:
            raise PlanError(f"{where}: smoothing of {tensor!r} needs {channels} divisors")
        for i, v in enumerate(divisors):
            _number(v, f"{where}: smoothing[{tensor!r}][{i}]", positive=True)


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
        if lr.mode not in modes.allowed_modes(info):
            raise PlanError(f"{at}: mode {lr.mode!r} must be one of {', '.join(modes.allowed_modes(info))} for a "
                            f"{info.op_type}")  # fmt: skip
        static = modes.get(lr.mode).calibrated
        if not isinstance(lr.weight, WeightRecord) or (static and not isinstance(lr.data, DataRecord)):
            raise PlanError(f"{at} is quantized but has no {'weight' if not isinstance(lr.weight, WeightRecord) else 'data'} entry")
        try:
            lr.choice()  # bits, granularity, block size and accuracy level fit the mode
        except ConfigError as exc:
            raise PlanError(f"{at}: {exc}") from None
        w = lr.weight
        count = {"per_channel": info.out_channels, "per_tensor": 1}.get(w.granularity, 0)
        if w.granularity == "per_block":
            inputs = int(np.prod(info.weight_shape)) // info.out_channels
            count = info.out_channels * -(-inputs // w.block_size)
        if not isinstance(w.scale_w, list) or len(w.scale_w) != count or not isinstance(w.offset_w, list) \
                or len(w.offset_w) != count:
            raise PlanError(f"{at}: {w.granularity} weights need {count} scale_w and offset_w values")
        for i, (s, z) in enumerate(zip(w.scale_w, w.offset_w)):
            _number(s, f"{at}: scale_w[{i}]", positive=True)
            _number(z, f"{at}: offset_w[{i}]", integer=True)
        if static:
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
    smoothing: Smoothing | None = None,
    notes: list[str] = (),
) -> Record:
    nodes = {n.name: n for n in qmodel.graph.node}
    kernels = {e.name: e.kernel for e in executed}
    layers = []
    for info in graph.layers:
        choice = plan[info.name]
        weight = data = None
        if choice.quantize:
            mode, node = modes.get(choice.mode), nodes.get(info.name)
            if node is None or (mode.kernels and node.op_type not in mode.kernels):
                raise PlanError(f"layer {info.name} was not built as {choice.mode}; cannot record it")
            w = mode.recorded_weights(qmodel, node, choice)
            weight = WeightRecord(w.bits, w.granularity, w.scales, w.zero_points, w.block_size)
            if mode.calibrated:
                d = dequantize_params(qmodel, node.input[0])
                if d is None:
                    raise PlanError(f"layer {info.name} was not quantized by onnxruntime; cannot record it")
                data = DataRecord(choice.activation_bits, choice.activation_algorithm,
                                  float(np.asarray(d[0]).reshape(())), int(np.asarray(d[1]).reshape(())))  # fmt: skip
        layers.append(LayerRecord(info.name, info.op_type, choice.quantize, info.depthwise, info.flops, weight, data,
                                  kernels.get(info.name, ""), choice.mode, choice.accuracy_level))  # fmt: skip
    acts = {t: {"scale": p.scale, "zero_point": p.zero_point, "algorithm": algorithms[t]} for t, p in activations.items()}
    return Record(model_sha256, activation_type, layers, acts, dict(objectives or {}), source_model, weight_range,
                  graph.unquantized_flops, smoothing.alpha if smoothing else 0.0,
                  dict(smoothing.scales) if smoothing else {}, list(notes), **versions())  # fmt: skip
