"""Python API for the PTQ engine: quantize a model with a plan, evaluate any model, re-apply a record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .config import Experiment
from .errors import ModelError, PlanError
from .evaluate.cost import bitops_fraction
from .evaluate.evaluator import Evaluator
from .evaluate.executed import ExecutedLayer, disagreements, executed_layers
from .evaluate.metrics import resolve_metric
from .fileio import atomic_write_bytes, atomic_write_files
from .graph.ingest import load_onnx, model_input, prepare
from .graph.layers import analyze
from .quantize.build import build_qdq
from .quantize.plan import LayerChoice, QuantPlan
from .record import Record, make_record, validate_record
from .sources import load_splits
from .workspace import Workspace

PRESETS = {
    "int8-per-channel": "per_channel",
    "int8-per-tensor": "per_tensor",
}


@dataclass(frozen=True)
class QuantizeResult:
    accuracy: float
    fp32_accuracy: float
    accuracy_drop: float
    bitops_fraction: float
    latency_ms: float
    fp32_latency_ms: float
    latency_ratio: float
    size_bytes: int
    fp32_size_bytes: int
    model_path: Path
    record_path: Path
    executed: tuple[ExecutedLayer, ...] = ()  # per layer, the kernel a default onnxruntime session runs


def preset_plan(ws: Workspace, preset: str, algorithm: str = "minmax") -> QuantPlan:
    """`int8-per-channel` / `int8-per-tensor`: every layer INT8 with one activation algorithm."""
    if preset not in PRESETS:
        raise PlanError(f"unknown plan '{preset}': use {', '.join(PRESETS)} or a plan YAML file")
    return QuantPlan.uniform(ws.graph.names, LayerChoice(True, PRESETS[preset], algorithm))


def quantize(ws: Workspace, plan: QuantPlan, out_dir: Path) -> QuantizeResult:
    """Build the plan's INT8 model from the cached statistics, score it against FP32, write model + record."""
    acts, algorithms = ws.activations(plan)
    qmodel = ws.build(plan, acts)
    executed = executed_layers(qmodel)
    wrong = disagreements(plan.weight_bits(), executed)
    if wrong:
        more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
        hint = ("autoquant's float-layer construction failed on this onnxruntime: please report it" if "meant to run float" in wrong[0]
                else "onnxruntime has no integer kernel for it in this graph: keep it float in the plan, or try "
                     "quantization.activation_type uint8")  # fmt: skip
        raise ModelError(f"onnxruntime {ort.__version__} would not run this plan as written: {wrong[0]}{more}; {hint}")
    ev = ws.evaluator
    qsess, fsess = ev.session(qmodel), ev.session(ws.model)
    result = ev.score(qsess)
    q_ms, f_ms = ev.latency_ms(qsess, fsess)
    q_bytes = qmodel.SerializeToString()
    fp32_bytes = ws.prepared.source.stat().st_size
    drop = ws.reference.accuracy - result.accuracy
    objectives = {"accuracy": result.accuracy, "fp32_accuracy": ws.reference.accuracy, "accuracy_drop": drop,
                  "bitops_fraction": bitops_fraction(ws.graph, plan), "latency_ms": q_ms, "size_bytes": len(q_bytes)}  # fmt: skip
    record = make_record(qmodel, ws.graph, plan, acts, algorithms, model_sha256=ws.sha,
                         activation_type=ws.exp.quantization.activation_type, objectives=objectives,
                         source_model=str(ws.prepared.source), executed=executed)  # fmt: skip
    out_dir = Path(out_dir)
    model_path, record_path = out_dir / "model.int8.onnx", out_dir / "record.json"
    atomic_write_files({model_path: q_bytes, record_path: record.to_json().encode()})
    return QuantizeResult(result.accuracy, ws.reference.accuracy, drop, objectives["bitops_fraction"], q_ms, f_ms,
                          q_ms / f_ms, len(q_bytes), fp32_bytes, model_path, record_path, tuple(executed))  # fmt: skip


@dataclass(frozen=True)
class EvaluateResult:
    accuracy: float
    latency_ms: float
    samples: int


def evaluate(model_path: Path, exp: Experiment) -> EvaluateResult:
    """Accuracy and latency of any ONNX model on the experiment's eval subset."""
    model = load_onnx(model_path)
    splits = load_splits(exp)
    ev = Evaluator(splits.eval, resolve_metric(exp.eval.metric), model_input(model), exp.eval)
    sess = ev.session(model)
    (latency,) = ev.latency_ms(sess)
    return EvaluateResult(ev.score(sess).accuracy, latency, len(splits.eval))


def apply_record(model_path: Path, record_path: Path, out: Path, cache_dir: Path) -> Path:
    """Rebuild the INT8 model a record describes from its FP32 source, without data or calibration."""
    record = Record.load(record_path)
    prepared = prepare(model_path, cache_dir)
    if prepared.sha256 != record.model_sha256:
        raise PlanError(
            f"{model_path} (sha256 {prepared.sha256[:12]}…) is not the model the record was made for "
            f"({record.model_sha256[:12]}…): give the original FP32 model, or re-run the search on this one"
        )
    model = prepared.load()
    graph = analyze(model)
    validate_record(record, model, graph, str(record_path))
    qmodel = build_qdq(model, graph, record.plan(), record.activation_params(), record.activation_type)
    return atomic_write_bytes(Path(out), qmodel.SerializeToString())

