"""CIFAR-10 ResNets (He et al. 2015, §4.2) matching the checkpoints described in shared/data/PROVENANCE.md."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelError

DEPTHS = {20: 3, 32: 5, 56: 9}


class _ShortcutA(nn.Module):
    """Option A shortcut: stride-2 subsampling, then zero-pad the channels (no parameters)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(planes // 4) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int) -> CifarResNet:
    if depth not in DEPTHS:
        raise ModelError(f"no CIFAR ResNet of depth {depth}: choose one of {sorted(DEPTHS)}")
    return CifarResNet(DEPTHS[depth])


def load_cifar_resnet(depth: int, checkpoint: Path) -> CifarResNet:
    """Build the network and load an akamaster/pytorch_resnet_cifar10 checkpoint (strict)."""
    if not checkpoint.is_file():
        raise ModelError(
            f"checkpoint {checkpoint} not found: set model.checkpoint in the experiment file to the .th file"
        )
    try:
        # The checkpoints are legacy (non-zip) pickles holding a plain dict; weights_only cannot read them.
        blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
        state = {k.removeprefix("module."): v for k, v in blob["state_dict"].items()}
        model = cifar_resnet(depth)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # torch.load of a foreign file raises UnpicklingError, RuntimeError, EOFError, …
        raise ModelError(f"{checkpoint} is not a CIFAR ResNet-{depth} checkpoint ({exc.__class__.__name__})") from exc
    return model.eval()
