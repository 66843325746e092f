"""The PTQ engine's actions: quantize a model with a plan, evaluate any model, re-apply a record."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .config import Experiment
from .errors import ConfigError, PlanError
from .evaluate.executed import ExecutedLayer, executed_layers
from .fileio import atomic_write_bytes, atomic_write_files
from .finetune import weights as tuned_weights
from .graph.ingest import load_onnx, prepare
from .graph.layers import analyze
from .measure import Measurement, Meter
from .quantize import modes
from .quantize.build import build_model
from .quantize.plan import FLOAT, LayerChoice, QuantPlan
from .quantize.scales import ActivationParams
from .quantize.smoothing import smooth
from .record import FinetuneRecord, Record, check_rebuilt, make_record, validate_record, validate_smoothing
from .workspace import Workspace

log = logging.getLogger(__name__)
GRANULARITY_PRESETS = {"int8-per-channel": "per_channel", "int8-per-tensor": "per_tensor"}
RECOVERY_WORDS = {"bc": {"bias_correction": True}, "adaround": {"weight_rounding": "adaptive"},
                  "clip": {"weight_clipping": "mse"}}
PRESETS = tuple(g + "".join(f"+{w}" for w in words) for g in GRANULARITY_PRESETS
                for words in ((), ("bc",), ("adaround",), ("clip",), ("bc", "adaround"), ("clip", "bc", "adaround")))


@dataclass(frozen=True)
class QuantizeResult(Measurement):
    """The measurement of a written INT8 model (paired with FP32), its FP32 baseline and where it is."""

    fp32_accuracy: float
    fp32_latency_ms: float
    fp32_size_bytes: int
    model_path: Path
    record_path: Path
    executed: tuple[ExecutedLayer, ...] = ()  # per layer, the kernel a default onnxruntime session runs


def is_preset(text: str) -> bool:
    """Whether `text` names a preset (its first word is a granularity preset), rather than a plan file."""
    return text.split("+")[0] in GRANULARITY_PRESETS


def preset_choice(preset: str, algorithm: str = "minmax") -> LayerChoice:
    """The one choice a preset gives every layer: its granularity, then recovery words in any order
    (`int8-per-tensor+adaround+bc` is `int8-per-tensor+bc+adaround`)."""
    head, *words = preset.split("+")
    unknown = [w for w in words if w not in RECOVERY_WORDS]
    if head not in GRANULARITY_PRESETS or unknown:
        what = f"word '+{unknown[0]}'" if unknown else f"'{head}'"
        raise PlanError(f"plan '{preset}': unknown {what}; a preset is {' or '.join(GRANULARITY_PRESETS)}, optionally "
                        f"with {' and '.join('+' + w for w in RECOVERY_WORDS)} in any order, or give a plan YAML file")
    fields = {k: v for w in set(words) for k, v in RECOVERY_WORDS[w].items()}
    return LayerChoice.parse({"weight_granularity": GRANULARITY_PRESETS[head], "activation_algorithm": algorithm,
                              **fields}, f"plan '{preset}'")


def preset_plan(ws: Workspace, preset: str, algorithm: str = "minmax") -> QuantPlan:
    """`int8-per-channel` / `int8-per-tensor`, with `+bc` (bias correction, on every layer that has a bias to
    correct) and `+adaround` (adaptive rounding): every layer INT8 with one activation algorithm."""
    choice = preset_choice(preset, algorithm)
    broken = [layer.name for layer in ws.graph.layers if not layer.finite]
    if broken:
        log.info("%d layer(s) have NaN or Inf in their weights and stay float (e.g. %s)", len(broken), broken[0])
    # bias correction on the layers that have a bias to correct
    plan = QuantPlan.uniform(ws.graph.names, choice).with_choices(
        {la.name: choice.with_fields(bias_correction=False) for la in ws.graph.layers
         if not modes.get(choice.mode).fits(la, choice)})
    return plan.with_choices(dict.fromkeys(broken, FLOAT))


@dataclass(frozen=True)
class Tuned:
    """Fine-tuned FP32 weights (finetune/) a model is built from, and how they were made (without the file's hash,
    which the writer fills in)."""

    weights: dict[str, np.ndarray]
    record: FinetuneRecord
    activations: dict[str, ActivationParams] = field(default_factory=dict)  # learnt scales, by tensor


def quantize(ws: Workspace, plan: QuantPlan, out_dir: Path, measured: Measurement | None = None,
             notes: list[str] = (), tuned: Tuned | None = None,
             objectives: dict[str, float] | None = None) -> QuantizeResult:
    """Build the plan's INT8 model from the cached statistics, measure it against FP32 (paired latency),
    write model + record. A plan onnxruntime would not run as written is refused before anything is written.

    `measured`: the figures of a model built from this plan before (a search trial's). When the model built
    now is that model, byte for byte, they are its figures and it is not measured again (only timed, if it
    was not); when it is not, the cache or the builder changed since and the figures would describe another
    model: PlanError. `notes` go into the record: what whoever deploys the model should know. `tuned`: build from
    fine-tuned weights, written beside the record. `objectives`: more figures for the record (a confirmation's)."""
    acts, algorithms = ws.activations(plan)
    if tuned is not None and tuned.activations:
        acts = {t: tuned.activations.get(t, p) for t, p in acts.items()}
    qmodel = ws.build(plan, acts, tuned.weights if tuned else None)
    blob, meter = qmodel.SerializeToString(), Meter(ws)
    if measured is None or not measured.model_sha256:
        measured = meter(qmodel, plan, timed=True)
    elif hashlib.sha256(blob).hexdigest() != measured.model_sha256:
        raise PlanError("the model rebuilt from the plan is not the model that was measured: the statistics cache "
                        "or autoquant changed since; re-run the search")
    elif math.isnan(measured.latency_ratio):
        ms, ratio, rounds = meter.latency(blob)
        measured = replace(measured, latency_ms=ms, latency_ratio=ratio, latency_rounds=rounds)
    executed = executed_layers(qmodel)
    fp32_ms = measured.latency_ms / measured.latency_ratio
    objectives = {"accuracy": measured.accuracy, "fp32_accuracy": ws.reference.accuracy,
                  "accuracy_drop": measured.accuracy_drop, "bitops_fraction": measured.bitops_fraction,
                  "latency_ms": measured.latency_ms, "size_bytes": measured.size_bytes, **(objectives or {})}
    record = make_record(qmodel, ws.graph, plan, acts, algorithms, model_sha256=ws.sha,
                         activation_type=ws.exp.quantization.activation_type, objectives=objectives,
                         source_model=str(ws.prepared.source), executed=executed,
                         weight_range=ws.weight_range, smoothing=ws.smoothing, notes=[*notes, *gain_note(measured)],
                         recovery=ws.recovery, finetune=tuned.record if tuned else None)
    out_dir = Path(out_dir)
    model_path, record_path = out_dir / "model.int8.onnx", out_dir / "record.json"
    files = {model_path: blob}
    if tuned is not None:
        weights = tuned_weights.to_bytes(tuned.weights)
        files[out_dir / tuned_weights.FILE] = weights
        record = replace(record, finetune=replace(tuned.record, weights_file=tuned_weights.FILE,
                                                  weights_sha256=tuned_weights.sha256(weights)))
    atomic_write_files({**files, record_path: record.to_json().encode()})
    return QuantizeResult(**asdict(measured), fp32_accuracy=ws.reference.accuracy, fp32_latency_ms=fp32_ms,
                          fp32_size_bytes=ws.prepared.source.stat().st_size, model_path=model_path,
                          record_path=record_path, executed=tuple(executed))


# A quantized model rarely beats its FP32 source, and never by much: a gain beyond this many standard errors of the
# drop (and a point), or beyond GAIN_POINTS where the metric has no per-sample hits, says the reference or the metric
# is off (labels of another order, an output that is not the one scored, a metric that is not "higher is better").
GAIN_STDERRS, GAIN_POINTS = 4.0, 2.0


def gain_note(m: Measurement) -> list[str]:
    """A note (and a warning) when the quantized model scores implausibly far above FP32."""
    gain = -m.accuracy_drop
    bound = max(GAIN_STDERRS * m.drop_stderr, 1.0) if math.isfinite(m.drop_stderr) else GAIN_POINTS
    if not gain > bound:
        return []
    note = (f"scores {gain:.2f} points above the FP32 model on the eval data: a gain that large usually means the "
            "reference or the metric is off (labels, eval.output, or a metric where lower is better); check them "
            "before trusting any figure")
    log.warning("warning: the quantized model %s", note)
    return [note]


def evaluate(model_path: Path, experiment: Workspace | Experiment) -> Measurement:
    """Accuracy of any ONNX model on the experiment's eval data, and its latency timed interleaved with the
    experiment's FP32 model (bitops are unknown without its plan: NaN)."""
    ws = experiment if isinstance(experiment, Workspace) else Workspace(experiment)
    return Meter(ws)(load_onnx(model_path), timed=True)


def apply_record(model_path: Path, record_path: Path, out: Path, cache_dir: Path) -> Path:
    """Rebuild the INT8 model a record describes from its FP32 source, without data or calibration."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory: give the path of the ONNX file to write, e.g. "
                          f"{out / 'model.int8.onnx'}")
    if out.exists() and any(out.resolve() == Path(p).resolve() for p in (model_path, record_path)):
        raise ConfigError(f"--out {out} is the {'FP32 model' if out.resolve() == Path(model_path).resolve() else 'record'}"
                          " itself: give another path for the rebuilt model")
    record = Record.load(record_path)
    prepared = prepare(model_path, cache_dir)
    if prepared.sha256 != record.model_sha256:
        raise PlanError(
            f"{model_path} (sha256 {prepared.sha256[:12]}…) is not the model the record was made for "
            f"({record.model_sha256[:12]}…): give the original FP32 model, or re-run the search on this one"
        )
    model = prepared.load()
    graph = analyze(model, sized=False)
    if record.smoothing:
        validate_smoothing(record, graph, str(record_path))
        model, _ = smooth(model, graph, record.smoothing, record.smoothquant_alpha)
        graph = analyze(model, sized=False)
    validate_record(record, model, graph, str(record_path))
    if record.finetune is not None:
        f = record.finetune
        model = tuned_weights.with_weights(model, tuned_weights.load(Path(record_path).parent / f.weights_file,
                                                                     f.weights_sha256))
    qmodel = build_model(model, graph, record.plan(str(record_path)), record.activation_params(), record.activation_type,
                         record.weight_range, recorded=record.recorded())
    check_rebuilt(record, qmodel, str(record_path))
    return atomic_write_bytes(Path(out), qmodel.SerializeToString())

