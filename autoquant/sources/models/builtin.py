"""Built-in models: exported to ONNX once and cached. The CIFAR ResNets load a checkpoint; the digits CNN
and the MobileNet-style net are trained once, seeded, on the data's train split."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from ...errors import ConfigError, ModelError, first_line
from ...fileio import atomic_write_bytes, file_lock
from ...graph.ingest import export_torch, file_sha256
from ...zoo import catalog
from . import MODEL_SOURCES

log = logging.getLogger(__name__)
_CHECKPOINT_DEPTH = {"cifar10_resnet20": 20, "cifar10_resnet32": 32, "cifar10_resnet56": 56}


@MODEL_SOURCES.register("builtin")
def resolve(exp, splits) -> Path:
    cache = exp.cache / "builtin"
    with file_lock(cache / ".lock"):  # parallel workers: one exports (or trains), the others wait
        return _path(exp, splits, cache)


def _path(exp, get_splits, cache: Path) -> Path:
    m = exp.model
    if m.builtin in _CHECKPOINT_DEPTH:
        if m.checkpoint is None:
            raise ConfigError(f"model.checkpoint is required for {m.builtin}: point it at the .th file")
        if not m.checkpoint.is_file():
            raise ModelError(
                f"checkpoint {m.checkpoint} not found: set model.checkpoint in {exp.source_file or 'the experiment'}"
            )
        out = cache / f"{m.builtin}-{file_sha256(m.checkpoint)[:12]}.onnx"
        if not _usable(out):
            # torch is imported only when the cached export must be made: the import takes a second
            from ...zoo.cifar_resnet import load_cifar_resnet

            export_torch(load_cifar_resnet(_CHECKPOINT_DEPTH[m.builtin], m.checkpoint),
                         np.zeros((1, 3, 32, 32), np.float32), out)
        return out
    splits = get_splits()
    if splits.train is None:
        raise ConfigError(f"{m.builtin} is trained here: set data.train_size (its samples are never evaluated on)")
    train = splits.train
    tag = catalog.trained_tag(m.builtin, train.sha256(), exp.data.seed)
    out = cache / f"{tag}.onnx"
    if _usable(out):
        return out
    shipped = catalog.shipped_model(tag)
    if shipped is not None:
        atomic_write_bytes(out, shipped.read_bytes())
        return out
    log.info("training the built-in %s on its %d train samples (once: cached in %s)", m.builtin, len(train), cache)
    net = catalog.train(m.builtin, train.x, train.y, cache, exp.data.seed, train.sha256())
    export_torch(net, train.x[:1], out)
    return out


def _usable(path: Path) -> bool:
    """Whether a cached export can be used; a truncated or damaged one is removed (and made again) with a message."""
    if not path.is_file():
        return False
    try:
        onnx.checker.check_model(onnx.load(str(path)))
        return True
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, ValidationError, … for a damaged file
        log.warning("cached built-in model %s is unreadable (%s): making it again", path, first_line(exc, 100))
        path.unlink(missing_ok=True)
        return False
