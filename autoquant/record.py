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

from .errors import ConfigError, PlanError
from .evaluate.executed import ExecutedLayer
from .fileio import atomic_write_bytes
from .graph.layers import GraphInfo
from .quantize.build import ActivationParams
from .quantize.modes import allowed_modes
from .quantize.modes.static import tensor_algorithms
from .quantize.plan import LayerChoice, QuantPlan
from .quantize.smoothing import Smoothing, smoothable
from .versions import versions

FORMAT_VERSION = 2
READS = (1, 2)  # 2 added the layer's mode and int4 blocks; a version-1 record is all static


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
    mode: str = "static"  # quantize/plan.py MODES
    accuracy_level: int = 0  # int4: MatMulNBits compute precision


    def choice(self) -> LayerChoice:
        if not (self.quantized and self.weight):
            return LayerChoice(quantize=False)
        if self.mode == "dynamic":
            return LayerChoice.dynamic(self.weight.granularity)
        if self.mode == "int4":
            return LayerChoice.int4(self.weight.block_size, self.accuracy_level)
        if self.data is None:
            raise PlanError(f"layer {self.name} is static but has no data entry")
        return LayerChoice(True, self.weight.granularity, self.data.algorithm, self.weight.bits, self.data.bits)


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
        if lr.mode not in allowed_modes(info):
            raise PlanError(f"{at}: mode {lr.mode!r} must be one of {', '.join(allowed_modes(info))} for a {info.op_type}")
        static = lr.mode == "static"
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


def _qparams(qmodel: onnx.ModelProto, tensor: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Scale and zero point of the DequantizeLinear that produces `tensor`, if any."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    for node in qmodel.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == tensor:
            return numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])
    return None


def _runtime_weights(qmodel: onnx.ModelProto, node: onnx.NodeProto | None, choice: LayerChoice) -> WeightRecord:
    """Weight scales and zero points of a dynamic (MatMulInteger) or int4 (MatMulNBits) layer."""
    want = "MatMulInteger" if choice.mode == "dynamic" else "MatMulNBits"
    if node is None or node.op_type != want:
        raise PlanError(f"layer {node.name if node else '?'} was not built as {want}; cannot record it")
    inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    if choice.mode == "dynamic":
        # The weight scale is the initializer multiplied with DynamicQuantizeLinear's run-time scale.
        x_scale = next(n.output[1] for n in qmodel.graph.node if n.op_type == "DynamicQuantizeLinear"
                       and n.output[0] == node.input[0])  # fmt: skip
        mul = next(n for n in qmodel.graph.node if n.op_type == "Mul" and x_scale in n.input)
        scale = inits[next(t for t in mul.input if t != x_scale)]
        zero = inits[node.input[3]]
        return WeightRecord(8, choice.weight_granularity, np.atleast_1d(scale).astype(float).tolist(),
                            np.atleast_1d(zero).astype(int).tolist())  # fmt: skip
    attrs = {a.name: a.i for a in node.attribute}
    blocks = -(-attrs["K"] // attrs["block_size"])
    packed = inits[node.input[3]].reshape(attrs["N"], -1)  # two 4-bit zero points per byte, low nibble first
    zero = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(attrs["N"], -1)[:, :blocks]
    return WeightRecord(4, "per_block", inits[node.input[2]].astype(float).reshape(-1).tolist(),
                        zero.astype(int).reshape(-1).tolist(), attrs["block_size"])  # fmt: skip


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
) -> Record:
    nodes = {n.name: n for n in qmodel.graph.node}
    kernels = {e.name: e.kernel for e in executed}
    layers = []
    for info in graph.layers:
        choice = plan[info.name]
        weight = data = None
        if choice.quantize and choice.mode == "static":
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
        elif choice.quantize:
            weight = _runtime_weights(qmodel, nodes.get(info.name), choice)
        layers.append(LayerRecord(info.name, info.op_type, choice.quantize, info.depthwise, info.flops, weight, data,
                                  kernels.get(info.name, ""), choice.mode, choice.accuracy_level))  # fmt: skip
    acts = {t: {"scale": p.scale, "zero_point": p.zero_point, "algorithm": algorithms[t]} for t, p in activations.items()}
    return Record(model_sha256, activation_type, layers, acts, dict(objectives or {}), source_model, weight_range,
                  graph.unquantized_flops, smoothing.alpha if smoothing else 0.0,
                  dict(smoothing.scales) if smoothing else {}, **versions())  # fmt: skip
