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
    return Record(model_sha256, activation_type, layers, acts, dict(objectives or {}), source_model, **versions())
