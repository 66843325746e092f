"""Model ingestion: load or export the FP32 ONNX model once, pre-process it once, cache both by hash."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

from ..errors import ModelError, first_line
from ..fileio import atomic_write_bytes, file_lock

OPSET = 17
MIN_OPSET = 13
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInput:
    name: str
    shape: tuple[int | str, ...]  # symbolic dims (e.g. "batch") stay strings
    dtype: np.dtype


@dataclass(frozen=True)
class PreparedModel:
    """The FP32 model as the user gave it and the pre-processed copy every quantization starts from."""

    source: Path
    sha256: str
    preprocessed: Path
    inputs: tuple[ModelInput, ...]
    outputs: tuple[str, ...]

    def load(self) -> onnx.ModelProto:
        return onnx.load(str(self.preprocessed))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_onnx(path: Path) -> onnx.ModelProto:
    """The ONNX model at `path`: one that passes onnx's checker, or that onnxruntime loads anyway (exports
    with, say, an output declared with a wrong shape run fine and are what users have)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found: give the path of an .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, RuntimeError… for files that are not ONNX
        raise ModelError(f"{path} is not a valid ONNX model ({first_line(exc)}): export it with torch.onnx.export") from exc
    if not model.graph.node:
        raise ModelError(f"{path} has an empty graph: export the model again")
    problem = check(model)
    if problem:
        raise ModelError(f"{path} is not a valid ONNX model ({problem}): export it with torch.onnx.export")
    return model


def check(model: onnx.ModelProto) -> str:
    """"" when onnx's checker passes the model or onnxruntime loads it; else the checker's complaint."""
    try:
        onnx.checker.check_model(model)
        return ""
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError, RuntimeError, … for bad models
        complaint = first_line(exc)
    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime's own error types: the checker's complaint is the clearer one
        return complaint
    log.debug("onnx's checker says %s; onnxruntime loads the model, so it is used as it is", complaint)
    return ""


def export_torch(module, example: np.ndarray | dict[str, np.ndarray], path: Path,
                 dynamic: dict[str, list[int]] | None = None, output_name: str = "logits") -> Path:
    """Export a torch module to ONNX once (opset 17), atomically. `example` is one array (the input is then
    named "input") or one per input name; `dynamic` lists each input's dynamic axes (default: the batch)."""
    import torch

    examples = example if isinstance(example, dict) else {"input": example}
    dynamic = dynamic or {}
    axes = {name: {a: ("batch" if a == 0 else f"{name}_dim{a}") for a in dynamic.get(name, [0])} for name in examples}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    module.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, but it is much faster and
        # keeps the shape-computation subgraphs real user models have, which the engine must handle.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(v) for v in examples.values()),
            str(tmp),
            input_names=list(examples),
            output_names=[output_name],
            opset_version=OPSET,
            dynamic_axes={**axes, output_name: {0: "batch"}},
            dynamo=False,
        )
    tmp.replace(path)
    return path


RUNTIME_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def check_ops(model: onnx.ModelProto) -> None:
    """Name the first op onnxruntime's CPU provider has no kernel for, before anything else fails on it."""
    for node in model.graph.node:
        if node.domain not in RUNTIME_DOMAINS:
            raise ModelError(
                f"node '{node.name}' uses {node.domain}.{node.op_type}, an op onnxruntime cannot run: replace it "
                "or register its implementation before quantizing"
            )


# Input types the engine feeds as they are: float inputs are activations (calibrated, quantizable), the
# others (token ids, masks, lengths) are fed and never quantized.
INPUT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64,
               onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_}


def model_inputs(model: onnx.ModelProto) -> tuple[ModelInput, ...]:
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if tt.elem_type not in INPUT_TYPES:
            kind = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else "untyped"
            raise ModelError(f"input '{vi.name}' is {kind}: autoquant feeds float32, int64, int32 and bool inputs; "
                             "export the model with one of those")
        dims = tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim)
        out.append(ModelInput(vi.name, dims, np.dtype(INPUT_TYPES[tt.elem_type])))
    if not out:
        raise ModelError("the model has no inputs to feed: export it with its inputs as graph inputs")
    return tuple(out)


def prepare(source: Path, cache_dir: Path) -> PreparedModel:
    """Hash the model and run onnxruntime's quant_pre_process (shape inference, BN folding) once per hash."""
    source = Path(source)
    model = load_onnx(source)
    check_ops(model)
    inputs = model_inputs(model)
    sha = file_sha256(source)
    pre = (Path(cache_dir) / "models" / sha[:16] / "preprocessed.onnx").resolve()
    with file_lock(pre.with_suffix(".lock")):
        _preprocess(model, source, pre)
    return PreparedModel(source, sha, pre, inputs, tuple(o.name for o in model.graph.output))


def _usable(pre: Path) -> bool:
    if not pre.is_file():
        return False
    try:
        problem = check(onnx.load(str(pre)))
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: onnx raises DecodeError, …
        problem = first_line(exc)
    if problem:
        log.warning("cached pre-processed model %s is unreadable (corrupt?); rebuilding it (%s)", pre, problem)
    return not problem


def _preprocess(model: onnx.ModelProto, source: Path, pre: Path) -> None:
    from onnxruntime.quantization import quant_pre_process

    if _usable(pre):
        return
    pre.parent.mkdir(parents=True, exist_ok=True)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if opset < MIN_OPSET:
        # Per-channel DequantizeLinear (the axis attribute) exists from opset 13; onnxruntime's quantizer
        # would write it into an opset-11 graph, which then fails to load as INVALID_GRAPH.
        log.info("upgrading %s from opset %d to %d (per-channel weights need it)", source.name, opset, MIN_OPSET)
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors naming the op it cannot convert
            raise ModelError(f"cannot upgrade {source} from opset {opset} to {MIN_OPSET} ({first_line(exc)}): "
                             f"export it with opset {MIN_OPSET} or newer") from exc
    # Given a path rather than the proto: given a proto, onnxruntime round-trips it through external data and
    # then fails to read initializers (Resize scales) back. Run in a directory of its own: a failed symbolic
    # inference leaves a debug model and its external data (a uuid-named .data file) in the working directory.
    with tempfile.TemporaryDirectory(dir=pre.parent, prefix=".preprocess-") as work, contextlib.chdir(work):
        staged, out = Path(work) / "source.onnx", Path(work) / "preprocessed.onnx"
        onnx.save(model, str(staged))
        try:
            quant_pre_process(str(staged), str(out), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare Exceptions for incomplete inference
            # Symbolic inference gives up on shapes computed from data (dynamic height/width through
            # Resize, Shape → Slice chains); ONNX's own inference still runs, and the shapes it cannot
            # know are taken from a calibration batch later (Workspace.graph).
            log.info("symbolic shape inference failed on %s (%s); pre-processing without it", source.name,
                     first_line(exc, 120))
            try:
                quant_pre_process(str(staged), str(out), skip_symbolic_shape=True)
            except Exception as exc2:
                raise ModelError(f"onnxruntime could not pre-process {source}: {first_line(exc2, 200)}") from exc2
        processed = onnx.load(str(out))
        _keep_declared_outputs(processed, model)
        atomic_write_bytes(pre, processed.SerializeToString())


def _keep_declared_outputs(processed: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Pre-processing drops the shape of an output its inference contradicts (an export that declares a
    rank-0 output holding a sequence); without one, onnx's checker refuses the model and every model built
    from it. Such an output keeps the declaration the user's model has."""
    declared = {o.name: o for o in source.graph.output}
    for out in processed.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in declared:
            out.type.CopyFrom(declared[out.name].type)
