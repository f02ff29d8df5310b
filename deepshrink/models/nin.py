"""Network in Network for CIFAR (Lin, Chen and Yan, "Network In Network", ICLR 2014, Sec. 3 and 4.2).

Three mlpconv blocks (a spatial conv followed by two 1x1 convs, the "micro network"), max/average
pooling with dropout between them, and global average pooling over the last block's num_classes maps
instead of fully connected layers. Widths follow the authors' CIFAR-10 model
(192-160-96, 192-192-192, 192-192-classes); this is also the NIN used by XNOR-Net-style binarization.

With `batch_norm=True` (default; binarized/quantized training needs it) each conv but the classifier is
followed by BatchNorm and has no bias; `batch_norm=False` gives the original 966,986-parameter network.
"""
from __future__ import annotations

from torch import nn

from ..registry import register_model

# (out_channels, kernel_size) per conv; "M"/"A" = 3x3 stride-2 max/avg pool followed by dropout.
_CIFAR_LAYOUT = [(192, 5), (160, 1), (96, 1), "M", (192, 5), (192, 1), (192, 1), "A", (192, 3), (192, 1)]


class NIN(nn.Module):
    """NIN for 32x32 inputs; `features` holds convs, BNs, ReLUs, pools; `classifier` is the last 1x1 conv."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, batch_norm: bool = True,
                 dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _CIFAR_LAYOUT:
            if item in ("M", "A"):
                pool = nn.MaxPool2d(3, 2, 1) if item == "M" else nn.AvgPool2d(3, 2, 1)
                layers += [pool, nn.Dropout(dropout)]
                continue
            out_channels, kernel = item
            layers.append(nn.Conv2d(channels, out_channels, kernel, padding=kernel // 2, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.default_input_size = (in_channels, 32, 32)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x):
        x = self.classifier(self.features(x))  # (N, classes, 8, 8) at 32x32
        return self.avgpool(x).flatten(1)  # (N, classes)


@register_model()
def nin(num_classes: int = 10, in_channels: int = 3, batch_norm: bool = True) -> NIN:
    """Network in Network for CIFAR-10/100."""
    return NIN(num_classes, in_channels, batch_norm)
