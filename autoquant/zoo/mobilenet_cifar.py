"""A small MobileNet-style CIFAR-10 network (depthwise-separable convs with BatchNorm).

shared/data has no CIFAR-10 training set, so it is trained on the "train" half of the CIFAR-10
test file (see autoquant.data.cifar10_splits) and calibrated/evaluated on the other half.
Its accuracy is therefore modest; it exists to show the depthwise/per-tensor failure mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from .training import cached_weights, random_crop_flip, train_classifier


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class MobileNetCifar(nn.Module):
    CONFIG = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1))

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers = _conv_bn(3, 32, 3)
        for cin, cout, stride in self.CONFIG:
            layers += _conv_bn(cin, cin, 3, stride, groups=cin) + _conv_bn(cin, cout, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def train_mobilenet_cifar(x_train: np.ndarray, y_train: np.ndarray, cache_dir: Path, seed: int,
                          key: str) -> MobileNetCifar:
    return cached_weights(
        MobileNetCifar, cache_dir, key, seed,
        lambda m: train_classifier(m, x_train, y_train, epochs=12, lr=0.004, seed=seed, augment=random_crop_flip),
    )
