"""Built-in models: exported to ONNX once and cached. The CIFAR ResNets load a checkpoint; the digits CNN
and the MobileNet-style net are trained once, seeded, on the data's train split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ConfigError, ModelError
from ...fileio import file_lock
from ...graph.ingest import export_torch, file_sha256
from . import MODEL_SOURCES

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
        if not out.is_file():
            # torch is imported only when the cached export must be made: the import takes a second
            from ... import zoo

            export_torch(zoo.load_cifar_resnet(_CHECKPOINT_DEPTH[m.builtin], m.checkpoint),
                         np.zeros((1, 3, 32, 32), np.float32), out)  # fmt: skip
        return out
    splits = get_splits()
    if splits.train is None:
        raise ConfigError(f"{m.builtin} is trained here: set data.train_size (its samples are never evaluated on)")
    train = splits.train
    tag = f"{m.builtin}-{train.sha256()[:12]}-seed{exp.data.seed}"
    out = cache / f"{tag}.onnx"
    if not out.is_file():
        from ... import zoo

        if m.builtin == "digits_cnn":
            net = zoo.train_digits_cnn(train.x, train.y, cache, seed=exp.data.seed)
        else:
            net = zoo.train_mobilenet_cifar(train.x, train.y, cache, seed=exp.data.seed)
        export_torch(net, train.x[:1], out)
    return out
