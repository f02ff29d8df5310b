"""VGG-Small for CIFAR: the 6-conv VGG of the quantization literature (Zhang et al., "LQ-Nets", ECCV 2018,
Sec. 5; also Cai et al., HWGQ, CVPR 2017), after Simonyan & Zisserman's VGG (ICLR 2015).

conv128-conv128-pool, conv256-conv256-pool, conv512-conv512-pool, fc: 3x3 convs with BatchNorm and ReLU,
4,660,106 parameters for 3x32x32 inputs and 10 classes.
"""
from __future__ import annotations

from torch import nn

from ..registry import register_model
from .layers import as_hw, init_weights

_WIDTHS = [128, 128, "M", 256, 256, "M", 512, 512, "M"]


class VGGSmall(nn.Module):
    """VGG-Small; `features` is Conv-BN-ReLU(-MaxPool) modules, `classifier` the single fc layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size=32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in _WIDTHS:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        height, width = as_hw(input_size)
        self.classifier = nn.Linear(channels * (height // 8) * (width // 8), num_classes)
        self.default_input_size = (in_channels, height, width)
        init_weights(self)

    def forward(self, x):
        x = self.features(x).flatten(1)  # (N, 512 * H/8 * W/8)
        return self.classifier(x)


@register_model()
def vgg_small(num_classes: int = 10, in_channels: int = 3, input_size=32) -> VGGSmall:
    """VGG-Small for CIFAR-sized inputs (`input_size` divisible by 8)."""
    return VGGSmall(num_classes, in_channels, input_size)
