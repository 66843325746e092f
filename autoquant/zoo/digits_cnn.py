"""The embedded default: a small CNN on scikit-learn's 8×8 digits (upscaled to 24×24 inside the model), trained
in seconds and cached.

It has a depthwise conv, so the per-channel case is there. And two channels of its second stage carry activations
OUTLIER_FACTOR times larger than the others' — a rescale that leaves the function unchanged (their batch-norm scale
and shift times k, the depthwise weights that read them divided by k: ReLU passes the factor through). Real
networks have such outlier channels (LayerNorm outputs in transformers, some CNN stages): one activation scale per
tensor cannot serve them and the rest at once, so all-INT8 loses accuracy, and the search has work to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .training import cached_weights, train_classifier

OUTLIER_FACTOR, OUTLIER_CHANNELS = 100.0, 2


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.upscale = nn.Upsample(scale_factor=3, mode="bilinear", align_corners=False)
        self.features = nn.Sequential(
            *_conv_bn(1, 32), *_conv_bn(32, 64, 2), *_conv_bn(64, 64, groups=64),
            nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(), *_conv_bn(128, 128, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(128, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.pool(self.features(self.upscale(x))).flatten(1)
        return self.fc2(nn.functional.relu(self.fc1(x)))


def with_outlier_channels(net: DigitsCNN, factor: float = OUTLIER_FACTOR, channels: int = OUTLIER_CHANNELS) -> DigitsCNN:
    """The same function, with the first `channels` outputs of the second stage `factor` times larger."""
    bn, depthwise = net.features[4], net.features[6]
    with torch.no_grad():
        for c in range(channels):
            bn.weight[c] *= factor
            bn.bias[c] *= factor
            depthwise.weight[c] /= factor
    return net


def train_digits_cnn(x_train: np.ndarray, y_train: np.ndarray, cache_dir: Path, seed: int, key: str) -> DigitsCNN:
    return cached_weights(
        DigitsCNN, cache_dir, key, seed,
        lambda m: with_outlier_channels(train_classifier(m, x_train, y_train, epochs=10, lr=0.01, seed=seed)),
    )
