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
from .quantize.plan import FLOAT, LayerChoice, QuantPlan
from .quantize.recovery import Recovery
from .quantize.scales import ActivationParams
from .quantize.smoothing import Smoothing, smoothable
from .versions import versions

FORMAT_VERSION = 6
# 2 added the layer's mode and int4 blocks (a version-1 record is all static); 3 added notes; 4 the recovery;
# 5 fine-tuning; 6 each layer's choice as its mode's own fields, and what its mode records besides its weights
READS = (1, 2, 3, 4, 5, 6)
# The layer entries of formats 1-5: their flat choice fields and the recovery data, now the choice's and `extra`
_FLAT = ("accuracy_level", "weight_rounding", "rounding_mask", "bias_correction", "bias_shift")


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
    data: DataRecord | None = None  # None for modes that quantize activations at run time (dynamic, int4)
    kernel: str = ""  # what onnxruntime ran for the layer when the record was made (e.g. QLinearConv, Conv)
    mode: str = FLOAT.mode  # a registered mode (quantize/modes/), or float
    choice: dict[str, Any] = field(default_factory=dict)  # the mode's own fields (LayerChoice.fields)
    extra: dict[str, Any] = field(default_factory=dict)  # what the mode records besides its weights (Mode.record_extra)

    def layer_choice(self, where: str = "record") -> LayerChoice:
        if not (self.quantized and self.weight):
            return FLOAT
        if modes.get(self.mode).calibrated and self.data is None:
            raise PlanError(f"layer {self.name} is {self.mode} but has no data entry")
        if not isinstance(self.choice, dict):
            raise PlanError(f"{where}: layer {self.name}: 'choice' must map its mode's fields to values")
        return LayerChoice.parse({"mode": self.mode, **self.choice}, f"{where}: layer {self.name}")

    @classmethod
    def of_format(cls, raw: dict[str, Any], version: int) -> LayerRecord:
        """A layer entry as a record of `version` wrote it."""
        raw = {**raw, "weight": raw.get("weight") and WeightRecord(**raw["weight"]),
               "data": raw.get("data") and DataRecord(**raw["data"])}
        if version >= 6:
            return cls(**raw)
        flat = {k: raw.pop(k) for k in _FLAT if k in raw}
        if not raw["quantized"] or raw["weight"] is None:
            return cls(**{**raw, "mode": FLOAT.mode})
        mode = raw["mode"] = raw.get("mode") or modes.modes()[0].name  # format 1: every layer in the default mode
        w, d = raw["weight"], raw["data"]
        choice = modes.get(mode).from_record(w.bits, w.granularity, w.block_size, d.algorithm if d else "minmax",
                                             flat.get("accuracy_level", 0))
        own = {k: flat[k] for k in ("weight_rounding", "bias_correction") if k in flat and k in choice.fields()}
        extra = {k: flat[k] for k in ("rounding_mask", "bias_shift") if flat.get(k)}
        return cls(**raw, choice={**choice.fields(), **own}, extra=extra)


@dataclass(frozen=True)
class FinetuneRecord:
    """How the model's FP32 weights were fine-tuned (finetune/), and the file beside the record that holds them."""

    steps: int
    lr: float | None  # None: each tensor's own step (finetune/train.py: RELATIVE_LR)
    batch_size: int
    seed: int
    data: str  # which samples it was fine-tuned on (FinetuneConfig.data, "+unlabeled" with finetune.unlabeled)
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

    def plan(self, where: str = "record") -> QuantPlan:
        return QuantPlan(tuple((layer.name, layer.layer_choice(where)) for layer in self.layers))

    def recorded(self) -> dict[str, dict[str, Any]]:
        """What each layer's mode recorded besides its weights, by layer: what a rebuild needs (BuildContext.recorded)."""
        return {lr.name: lr.extra for lr in self.layers if lr.extra}

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
                                f"{' and '.join(map(str, READS))}")
            layers = [LayerRecord.of_format(lr, raw["format_version"]) for lr in raw.pop("layers")]
            tuned = raw.pop("finetune", None)
            return cls(layers=layers, finetune=FinetuneRecord(**tuned) if tuned else None, **raw)
        except ConfigError as exc:  # a mode named in a record that no longer exists, say
            raise PlanError(f"{path}: {exc}") from exc
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError, StopIteration) as exc:
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
                            f"{info.op_type}")
        static = modes.get(lr.mode).calibrated
        if not isinstance(lr.weight, WeightRecord) or (static and not isinstance(lr.data, DataRecord)):
            raise PlanError(f"{at} is quantized but has no {'weight' if not isinstance(lr.weight, WeightRecord) else 'data'} entry")
        try:
            choice = lr.layer_choice(where)  # the mode's own fields, each checked by its choice type
        except ConfigError as exc:
            raise PlanError(str(exc)) from None
        if not modes.get(lr.mode).fits(info, choice):
            raise PlanError(f"{at}: {modes.get(lr.mode).misfit(info, choice)}")
        if not isinstance(lr.extra, dict):
            raise PlanError(f"{at}: 'extra' must map names to what the mode recorded")
        modes.get(lr.mode).check_extra(lr.extra, info, choice, at)
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
                                "writes")
        if static:
            _number(lr.data.scale_d, f"{at}: scale_d", positive=True)
            _zero_point(lr.data.offset_d, f"{at}: offset_d", record.activation_type)
    if not isinstance(record.activations, dict):
        raise PlanError(f"{where}: 'activations' must map tensor names to scale and zero_point")
    missing = sorted(set(modes.activation_tensors(model, graph, record.plan(where))) - set(record.activations))
    if missing:
        raise PlanError(f"{where}: activations has no entry for {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                        + ", which the plan quantizes")
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
    plan = record.plan(where)
    for lr in record.layers:
        if not lr.quantized:
            continue
        choice = plan[lr.name]
        built, w = modes.get(lr.mode).recorded_weights(qmodel, nodes[lr.name], choice), lr.weight
        differ = [name for name, ok in (
            ("bits", built.bits == w.bits), ("granularity", built.granularity == w.granularity),
            ("block_size", built.block_size == w.block_size),
            ("scale_w", np.array_equal(np.float32(built.scales), np.float32(w.scale_w))),
            ("offset_w", list(built.zero_points) == [int(z) for z in w.offset_w])) if not ok]
        if differ:
            raise PlanError(f"{where}: layer {lr.name}: its weight {differ[0]} are not those of the model rebuilt from "
                            "the FP32 weights with its choice: the record was edited, or made for other weights; use "
                            "the record as autoquant wrote it")


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
        if not choice.quantize:
            layers.append(LayerRecord(info.name, info.op_type, False, info.depthwise, info.flops,
                                      kernel=kernels.get(info.name, "")))
            continue
        mode, node = modes.get(choice.mode), nodes.get(info.name)
        if node is None or (mode.kernels and node.op_type not in mode.kernels):
            raise PlanError(f"layer {info.name} was not built as {choice.mode}; cannot record it")
        w = mode.recorded_weights(qmodel, node, choice)
        a = mode.recorded_activation(qmodel, node, choice)
        layers.append(LayerRecord(info.name, info.op_type, True, info.depthwise, info.flops,
                                  WeightRecord(w.bits, w.granularity, w.scales, w.zero_points, w.block_size),
                                  DataRecord(a.bits, a.algorithm, a.scale, a.zero_point) if a else None,
                                  kernels.get(info.name, ""), choice.mode, choice.fields(),
                                  mode.record_extra(info, choice, recovery)))
    acts = {t: {"scale": p.scale, "zero_point": p.zero_point, "algorithm": algorithms[t]} for t, p in activations.items()}
    return Record(model_sha256, activation_type, layers, acts, dict(objectives or {}), source_model, weight_range,
                  graph.unquantized_flops, smoothing.alpha if smoothing else 0.0,
                  dict(smoothing.scales) if smoothing else {}, list(notes), finetune, **versions())
