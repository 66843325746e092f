"""The embedded default: a small CNN on scikit-learn's 8×8 digits, trained in seconds and cached.

It has a depthwise conv on purpose, so the quickstart exercises the per-channel case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from .training import cached_weights, train_classifier

RECIPE = "digits-cnn-v2:epochs=30:lr=0.01"


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.fc2(nn.functional.relu(self.fc1(x)))


def train_digits_cnn(x_train: np.ndarray, y_train: np.ndarray, cache_dir: Path, seed: int = 0) -> DigitsCNN:
    key = f"{RECIPE}:seed={seed}:n={len(x_train)}:{x_train.sum():.6f}"
    return cached_weights(
        DigitsCNN, cache_dir, key, seed,
        lambda m: train_classifier(m, x_train, y_train, epochs=30, lr=0.01, seed=seed),
    )  # fmt: skip
