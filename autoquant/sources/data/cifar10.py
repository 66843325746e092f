"""The CIFAR-10 test file of shared/data: uint8 NHWC images → ImageNet-normalized float32 NCHW, labels 0-9."""

from __future__ import annotations

import numpy as np

from ...data import SINGLE_INPUT_KEY, Dataset
from ...errors import DataError
from . import DATA_SOURCES, SourceContext
from .npz_file import array_names, read_arrays

# The shared CIFAR ResNets were trained with ImageNet statistics (shared/data/PROVENANCE.md).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@DATA_SOURCES.register("cifar10", requires=("path",))
def load(cfg, ctx: SourceContext) -> Dataset:
    names = array_names(cfg.path)
    if "images" not in names or "labels" not in names:
        raise DataError(f"{cfg.path} has arrays {names}, not images and labels: point data.path at cifar10_test.npz")
    raw = read_arrays(cfg.path, ["images", "labels"])
    images, labels = raw["images"], raw["labels"]
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{cfg.path}: 'images' has shape {images.shape}, expected (N, 32, 32, 3) uint8 RGB")
    return Dataset({SINGLE_INPUT_KEY: normalize_cifar(images)}, labels.astype(np.int64))


def normalize_cifar(images: np.ndarray) -> np.ndarray:
    # Channel by channel into the NCHW array: the same operations in the same order as (x / 255 - mean) / std on
    # the whole array (bit for bit), without its four whole-array temporaries.
    out = np.empty((len(images), 3, *images.shape[1:3]), np.float32)
    for c in range(3):
        x = out[:, c]
        np.copyto(x, images[..., c], casting="unsafe")
        x /= np.float32(255.0)
        x -= IMAGENET_MEAN[c]
        x /= IMAGENET_STD[c]
    return out
