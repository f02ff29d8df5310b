"""LeNet-5 and LeNet-300-100 (LeCun et al., "Gradient-Based Learning Applied to Document Recognition",
Proc. IEEE 1998), the small networks of the MNIST / Fashion-MNIST experiments in the pruning and
quantization literature (e.g. Han et al. 2015 report LeNet-300-100 and LeNet-5 on MNIST).

Modern variant: ReLU activations and max-pooling instead of scaled tanh and trainable sub-sampling.
"""
from __future__ import annotations

import math

from torch import nn

from ..errors import UserError
from ..registry import register_model
from .layers import as_hw


class LeNet5(nn.Module):
    """conv(6, 5x5, pad 2) - pool - conv(16, 5x5) - pool to 5x5 - fc 120 - fc 84 - fc classes.

    The first conv pads by 2 (the usual MNIST variant), so a 28x28 input gives the paper's 5x5x16 maps
    after the second pool; the second pool is adaptive (`AdaptiveMaxPool2d(5)`, identical to a 2x2 max-pool
    at 28x28), so 32x32 inputs (CIFAR, SVHN) work with the same 61,706-parameter network (1 channel).
    `batch_norm=True` adds BatchNorm after every hidden conv/fc (bn1..bn4, before the ReLU), the variant
    that quantizers rescaling weights to [-1, 1] (DoReFa) need to train: without it nothing undoes the scale.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, batch_norm: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm2d(6) if batch_norm else nn.Identity()
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.bn2 = nn.BatchNorm2d(16) if batch_norm else nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.AdaptiveMaxPool2d(5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.bn3 = nn.BatchNorm1d(120) if batch_norm else nn.Identity()
        self.relu3 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(120, 84)
        self.bn4 = nn.BatchNorm1d(84) if batch_norm else nn.Identity()
        self.relu4 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(84, num_classes)
        self.default_input_size = (in_channels, 28, 28)

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x)))).flatten(1)  # (N, 400)
        x = self.relu3(self.bn3(self.fc1(x)))
        x = self.relu4(self.bn4(self.fc2(x)))
        return self.fc3(x)


class LeNet300(nn.Module):
    """LeNet-300-100: flatten - fc 300 - fc 100 - fc classes (266,610 parameters on 1x28x28)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size=28):
        super().__init__()
        height, width = as_hw(input_size)
        self.in_features = in_channels * height * width
        self.fc1 = nn.Linear(self.in_features, 300)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(100, num_classes)
        self.default_input_size = (in_channels, height, width)

    def forward(self, x):
        if math.prod(x.shape[1:]) != self.in_features:
            raise UserError(f"lenet300 was built for {self.default_input_size} inputs, got {tuple(x.shape[1:])}; "
                            "pass input_size=<H> (or (H, W)) to create_model")
        x = x.flatten(1)  # (N, C * H * W)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


@register_model()
def lenet5(num_classes: int = 10, in_channels: int = 1, batch_norm: bool = False) -> LeNet5:
    """LeNet-5 for 28x28 or 32x32 inputs (61,706 parameters for 1 channel and 10 classes; with
    `batch_norm`, 452 more: scale and shift of 6 + 16 + 120 + 84 channels)."""
    return LeNet5(num_classes, in_channels, batch_norm)


@register_model()
def lenet300(num_classes: int = 10, in_channels: int = 1, input_size=28) -> LeNet300:
    """LeNet-300-100 for inputs of `input_size` (an int or (H, W); 28 for MNIST)."""
    return LeNet300(num_classes, in_channels, input_size)
