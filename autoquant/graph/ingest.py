"""Model ingestion: load or export the FP32 ONNX model once, pre-process it once, cache both by hash."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import ModelError, first_line
from ..fileio import file_lock

OPSET = 17
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
    input: ModelInput
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
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found: give the path of an .onnx file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, RuntimeError… for bad files
        raise ModelError(f"{path} is not a valid ONNX model ({first_line(exc)}): export it with torch.onnx.export") from exc
    if not model.graph.node:
        raise ModelError(f"{path} has an empty graph: export the model again")
    return model


def export_torch(module, example: np.ndarray, path: Path) -> Path:
    """Export a torch module to ONNX once (opset 17, dynamic batch), atomically."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    module.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, but it is 40× faster here and
        # keeps the shape-computation subgraphs real user models have, which the engine must handle.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.from_numpy(example),),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
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


def model_input(model: onnx.ModelProto) -> ModelInput:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelError(f"the model has {len(inputs)} inputs ({names}); autoquant handles single-input models only")
    tt = inputs[0].type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"input '{inputs[0].name}' is not float32: autoquant quantizes float32 models")
    dims = tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim)
    return ModelInput(inputs[0].name, dims, np.dtype(np.float32))


def prepare(source: Path, cache_dir: Path) -> PreparedModel:
    """Hash the model and run onnxruntime's quant_pre_process (shape inference, BN folding) once per hash."""
    source = Path(source)
    model = load_onnx(source)
    check_ops(model)
    model_input_ = model_input(model)
    sha = file_sha256(source)
    pre = (Path(cache_dir) / "models" / sha[:16] / "preprocessed.onnx").resolve()
    with file_lock(pre.with_suffix(".lock")):
        _preprocess(model, source, pre)
    return PreparedModel(source, sha, pre, model_input_, tuple(o.name for o in model.graph.output))


def _usable(pre: Path) -> bool:
    if not pre.is_file():
        return False
    try:
        onnx.checker.check_model(onnx.load(str(pre)))
        return True
    except Exception:  # noqa: BLE001 - a truncated or foreign file: onnx raises DecodeError, ValidationError, …
        log.warning("cached pre-processed model %s is unreadable (corrupt?); rebuilding it", pre)
        return False


def _preprocess(model: onnx.ModelProto, source: Path, pre: Path) -> None:
    from onnxruntime.quantization import quant_pre_process

    if not _usable(pre):
        pre.parent.mkdir(parents=True, exist_ok=True)
        tmp = pre.with_suffix(".tmp.onnx")
        try:
            # Its symbolic shape inference drops a debug file into the working directory when it
            # fails; run it from the cache directory so that file never lands in the user's tree.
            with contextlib.chdir(pre.parent):
                quant_pre_process(model, str(tmp), skip_symbolic_shape=False)
        except Exception as exc:
            raise ModelError(f"onnxruntime could not pre-process {source}: {first_line(exc, 200)}") from exc
        tmp.replace(pre)

