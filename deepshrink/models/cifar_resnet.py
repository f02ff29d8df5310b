"""CIFAR ResNet-20/32/56/110 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2).

A 3x3 stem with 16 filters, then three stages of n basic blocks with 16, 32 and 64 filters on 32x32,
16x16 and 8x8 maps, global average pooling and a fully connected layer: depth = 6n + 2.

Shortcuts where the shape changes (first block of stages 2 and 3):
- option "A" (the paper's CIFAR choice): identity on a stride-2 subsample, zero-padded to the new width;
  no parameters, so ResNet-20 has 0.27 M parameters.
- option "B": a 1x1 strided conv + BN projection (`downsample.0`, `downsample.1`, as in torchvision).

Example::

    model = deepshrink.create_model("resnet20", shortcut="B")
    model.load_state_dict(torch.load("resnet20-cifar10jpeg.pt", weights_only=True))
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..registry import register_model
from .layers import conv1x1, conv3x3, init_weights
from .resnet import BasicBlock


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: subsample by `stride`, then append zero channels up to `out_planes`."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.extra = out_planes - in_planes
        self.stride = stride

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]  # (N, C, H / s, W / s)
        # Split the extra channels evenly on both sides, as the reference Torch implementation does.
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2 with `shortcut` option "A" or "B"."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A"):
        super().__init__()
        if (depth - 2) % 6:
            raise UserError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        shortcut = str(shortcut).upper()
        if shortcut not in ("A", "B"):
            raise UserError(f"shortcut must be 'A' (zero padding) or 'B' (1x1 projection), got {shortcut!r}")
        self.shortcut = shortcut
        blocks_per_stage = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        self.default_input_size = (in_channels, 32, 32)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes:
            if self.shortcut == "A":
                downsample = ZeroPadShortcut(self.in_planes, planes, stride)
            else:
                downsample = nn.Sequential(conv1x1(self.in_planes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x).flatten(1)  # (N, 64)
        return self.fc(x)


@register_model()
def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-20 (n = 3): 0.27 M parameters, 41 MMACs at 32x32 (option A)."""
    return CifarResNet(20, num_classes, in_channels, shortcut)


@register_model()
def resnet32(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-32 (n = 5): 0.46 M parameters (option A)."""
    return CifarResNet(32, num_classes, in_channels, shortcut)


@register_model()
def resnet56(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-56 (n = 9): 0.85 M parameters (option A)."""
    return CifarResNet(56, num_classes, in_channels, shortcut)


@register_model()
def resnet110(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-110 (n = 18): 1.7 M parameters (option A)."""
    return CifarResNet(110, num_classes, in_channels, shortcut)
