"""The record file (DESIGN.md §4): every scale and zero point of an exported model, and how it was chosen.

Written from the built QDQ model itself (not from what we meant to build), and able to rebuild it:
`apply` feeds the recorded activation parameters back into the same builder, so the outputs match
exactly.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import ConfigError, PlanError
from .evaluate.executed import ExecutedLayer
from .fileio import atomic_write_bytes
from .graph.layers import GraphInfo, LayerInfo
from .quantize import modes
from .quantize.modes.static import dequantize_params, tensor_algorithms
from .quantize.plan import ROUNDINGS, LayerChoice, QuantPlan
from .quantize.recovery import Recovery, recovers
from .quantize.scales import ActivationParams
from .quantize.smoothing import Smoothing, smoothable
from .versions import versions

FORMAT_VERSION = 5
# 2 added the layer's mode and int4 blocks (a version-1 record is all static); 3 added notes; 4 the recovery;
# 5 fine-tuning
READS = (1, 2, 3, 4, 5)


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
    # Recovery (quantize/recovery/): how each weight was rounded from its floor on the grid (packed bits, base64),
    # and the shift per output channel added to the layer's bias; `apply` rebuilds from the FP32 weights with them
    weight_rounding: str = "nearest"
    rounding_mask: str = ""
    bias_correction: bool = False
    bias_shift: list[float] = field(default_factory=list)


    def choice(self) -> LayerChoice:
        if not (self.quantized and self.weight):
            return LayerChoice(quantize=False)
        mode = modes.get(self.mode)
        if mode.calibrated and self.data is None:
            raise PlanError(f"layer {self.name} is {self.mode} but has no data entry")
        w = self.weight
        choice = mode.from_record(w.bits, w.granularity, w.block_size, self.data.algorithm if self.data else "minmax",
                                  self.accuracy_level)  # fmt: skip
        if self.weight_rounding == "nearest" and not self.bias_correction:
            return choice
        return replace(choice, weight_rounding=self.weight_rounding, bias_correction=self.bias_correction)


@dataclass(frozen=True)
class FinetuneRecord:
    """How the model's FP32 weights were fine-tuned (finetune/), and the file beside the record that holds them."""

    steps: int
    lr: float
    batch_size: int
    seed: int
    data: str  # which samples it was fine-tuned on: calibration or train (FinetuneConfig.data)
    learned_scales: bool  # the activation scales were trained too (the record's activations hold them)
    validation: float  # share of the samples held out
    data_sha256: str
    samples: int
    loss_first: float  # distillation loss (output NMSE to FP32) of the first and the last 10 steps' batches
    loss_last: float
    chosen_step: int  # the step whose weights were kept (the held-out samples' least output NMSE; 0: none beat PTQ)
    held_out_nmse: float | None  # at that step (None: nothing held out)
    seconds: float
    weights_file: str  # beside the record
    weights_sha256: str


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
    finetune: FinetuneRecord | None = None  # the weights were fine-tuned: `apply` rebuilds from its weights file
    format_version: int = FORMAT_VERSION
    autoquant_version: str = ""
    onnxruntime_version: str = ""
    onnx_version: str = ""

    def plan(self) -> QuantPlan:
        return QuantPlan(tuple((layer.name, layer.choice()) for layer in self.layers))

    def recovery(self, graph: GraphInfo) -> RecordedRecovery:
        return RecordedRecovery({lr.name: lr for lr in self.layers}, graph)

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
            tuned = raw.pop("finetune", None)
            return cls(layers=layers, finetune=FinetuneRecord(**tuned) if tuned else None, **raw)
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


def _validate_recovery(lr: LayerRecord, info: LayerInfo, at: str) -> None:
    if lr.weight_rounding not in ROUNDINGS:
        raise PlanError(f"{at}: weight_rounding {lr.weight_rounding!r} must be one of {', '.join(ROUNDINGS)}")
    if lr.weight_rounding != "nearest":
        try:
            packed = base64.b64decode(lr.rounding_mask, validate=True)
        except (ValueError, TypeError):
            raise PlanError(f"{at}: rounding_mask is not base64") from None
        if len(packed) != -(-int(np.prod(info.weight_shape)) // 8):
            raise PlanError(f"{at}: rounding_mask must hold one bit per weight ({int(np.prod(info.weight_shape))})")
    if not isinstance(lr.bias_correction, bool):
        raise PlanError(f"{at}: bias_correction must be true or false, got {lr.bias_correction!r}")
    if lr.bias_correction:
        if not info.bias_slot:
            raise PlanError(f"{at}: the layer has no bias to correct")
        if not isinstance(lr.bias_shift, list) or len(lr.bias_shift) != info.out_channels:
            raise PlanError(f"{at}: bias_shift needs {info.out_channels} values")
        for i, v in enumerate(lr.bias_shift):
            _number(v, f"{at}: bias_shift[{i}]")


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
            lr.choice()  # bits, granularity, block size, accuracy level and recovery fit the mode
        except ConfigError as exc:
            raise PlanError(f"{at}: {exc}") from None
        _validate_recovery(lr, info, at)
        w = lr.weight
        count = {"per_channel": info.out_channels, "per_tensor": 1}.get(w.granularity, 0)
        if w.granularity == "per_block":
            inputs = int(np.prod(info.weight_shape)) // info.out_channels
            count = info.out_channels * -(-inputs // w.block_size)
        if not isinstance(w.scale_w, list) or len(w.scale_w) != count or not isinstance(w.offset_w, list) \
                or len(w.offset_w) != count:
            raise PlanError(f"{at}: {w.granularity} weights need {count} scale_w and offset_w values")
        lo, hi = modes.get(lr.mode).weight_zero_points
        for i, (s, z) in enumerate(zip(w.scale_w, w.offset_w)):
            _number(s, f"{at}: scale_w[{i}]", positive=True)
            if not lo <= _number(z, f"{at}: offset_w[{i}]", integer=True) <= hi:
                raise PlanError(f"{at}: offset_w[{i}] {z} is outside [{lo}, {hi}], the zero points mode {lr.mode} "
                                "writes")  # fmt: skip
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


def check_rebuilt(record: Record, qmodel: onnx.ModelProto, where: str) -> None:
    """The model `apply` rebuilt from the FP32 weights holds the record's weight scales and zero points, layer by
    layer: a record edited by hand (or made from other weights) would otherwise apply without a word, the edit
    silently ignored, since the builder computes weights from the FP32 model."""
    nodes = {n.name: n for n in qmodel.graph.node}
    plan = record.plan()
    for lr in record.layers:
        if not lr.quantized:
            continue
        choice = plan[lr.name]
        built = modes.get(lr.mode).recorded_weights(qmodel, nodes[lr.name], choice)
        scales_equal = np.array_equal(np.float32(built.scales), np.float32(lr.weight.scale_w))
        if not scales_equal or list(built.zero_points) != [int(z) for z in lr.weight.offset_w]:
            which = "scale_w" if not scales_equal else "offset_w"
            raise PlanError(f"{where}: layer {lr.name}: its {which} are not those of the model rebuilt from the FP32 "
                            "weights: the record was edited, or made for other weights; use the record as "
                            "autoquant wrote it")  # fmt: skip


class RecordedRecovery:
    """The rounding and bias shifts a record holds, for rebuilding its model (quantize/recovery/: Recovery)."""

    def __init__(self, layers: dict[str, LayerRecord], graph: GraphInfo):
        self.layers, self.graph = layers, graph

    def rounding(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        count = int(np.prod(layer.weight_shape))
        bits = np.unpackbits(np.frombuffer(base64.b64decode(self.layers[layer.name].rounding_mask), np.uint8))
        return bits[:count].reshape(layer.weight_shape)

    def shift(self, layer: LayerInfo, choice: LayerChoice) -> np.ndarray:
        return np.array(self.layers[layer.name].bias_shift, np.float32)


def _recovery_fields(info: LayerInfo, choice: LayerChoice, recovery: Recovery | None) -> dict[str, Any]:
    if not (choice.quantize and recovers(choice)):
        return {}
    out: dict[str, Any] = {"weight_rounding": choice.weight_rounding, "bias_correction": choice.bias_correction}
    if choice.weight_rounding != "nearest":
        mask = recovery.rounding(info, choice).astype(np.uint8).ravel()
        out["rounding_mask"] = base64.b64encode(np.packbits(mask).tobytes()).decode()
    if choice.bias_correction:
        out["bias_shift"] = [float(v) for v in recovery.shift(info, choice)]
    return out


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
    recovery: Recovery | None = None,
    finetune: FinetuneRecord | None = None,
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
                                  kernels.get(info.name, ""), choice.mode, choice.accuracy_level,
                                  **_recovery_fields(info, choice, recovery)))  # fmt: skip
    acts = {t: {"scale": p.scale, "zero_point": p.zero_point, "algorithm": algorithms[t]} for t, p in activations.items()}
    return Record(model_sha256, activation_type, layers, acts, dict(objectives or {}), source_model, weight_range,
                  graph.unquantized_flops, smoothing.alpha if smoothing else 0.0,
                  dict(smoothing.scales) if smoothing else {}, list(notes), finetune, **versions())  # fmt: skip
