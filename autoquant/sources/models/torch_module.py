"""A PyTorch module: `model.torch: "file.py:factory"` (relative to the experiment file) or
"package.module:factory", returning a torch.nn.Module; `model.checkpoint` an optional state_dict;
`model.inputs` each input's example shape, dtype and dynamic axes. Exported once with torch.onnx and
cached by the hash of the code reference, the factory's file, the checkpoint and the input spec."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np

from ...errors import ConfigError, ModelError, first_line
from ...fileio import file_lock
from ...graph.ingest import export_torch, file_sha256
from ...usercode import load_callable
from . import MODEL_SOURCES


def _identity(exp, base: Path) -> str:
    m = exp.model
    target = m.torch.rpartition(":")[0]
    code = base / target if target.endswith(".py") and not Path(target).is_absolute() else Path(target)
    parts = [m.torch, json.dumps({k: [v.shape, v.dtype, v.dynamic] for k, v in m.inputs.items()}), m.output,
             file_sha256(code) if code.is_file() else "", file_sha256(m.checkpoint) if m.checkpoint else ""]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _forward_order(module, names: list[str], ref: str) -> list[str]:
    """The inputs in the order forward() takes them (the exporter passes them by position)."""
    params = [n for n, p in inspect.signature(module.forward).parameters.items()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(names) == 1 and len(params) >= 1:
        return names
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ConfigError(f"model.inputs names '{unknown[0]}' but {ref}'s forward() takes ({', '.join(params)}): name "
                          "each input after its forward() argument")
    return sorted(names, key=params.index)


@MODEL_SOURCES.register("torch")
def resolve(exp, splits) -> Path:
    import torch

    m = exp.model
    base = exp.source_file.parent if exp.source_file else Path.cwd()
    if m.checkpoint is not None and not m.checkpoint.is_file():
        raise ModelError(f"checkpoint {m.checkpoint} not found: set model.checkpoint to a state_dict file")
    out = exp.cache / "torch" / f"{_identity(exp, base)[:24]}.onnx"
    with file_lock(out.with_suffix(".lock")):
        if out.is_file():
            return out
        factory = load_callable(m.torch, base, "model.torch")
        try:
            module = factory()
            if m.checkpoint is not None:
                module.load_state_dict(torch.load(m.checkpoint, map_location="cpu", weights_only=True))
        except Exception as exc:  # the user's code and checkpoint: say what failed, in one line
            # load_state_dict lists the missing and unexpected keys on the lines after its first: keep them
            said = " ".join(str(exc).split())[:300] or exc.__class__.__name__
            raise ModelError(f"model.torch '{m.torch}' could not be built or loaded ({exc.__class__.__name__}: "
                             f"{said})") from exc
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"model.torch '{m.torch}' returned a {type(module).__name__}, not a torch.nn.Module")
        order = _forward_order(module, list(m.inputs), m.torch)
        examples = {name: (np.ones(m.inputs[name].shape, m.inputs[name].dtype) if m.inputs[name].dtype != "float32"
                           else np.random.default_rng(0).standard_normal(m.inputs[name].shape).astype(np.float32))
                    for name in order}
        try:
            export_torch(module, examples, out, {n: s.dynamic for n, s in m.inputs.items()}, m.output)
        except Exception as exc:  # torch.onnx raises many types for unexportable modules
            raise ModelError(f"torch.onnx could not export '{m.torch}' ({exc.__class__.__name__}: "
                             f"{first_line(exc, 160)}): check model.inputs against its forward()") from exc
    return out
