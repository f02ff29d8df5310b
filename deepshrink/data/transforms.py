"""Image transforms on tensors, applied to whole batches where the augmentation allows it.

- CIFAR-style training augmentation (He et al. 2016, Sec. 4.2): zero-pad 4 pixels, take a random
  32x32 crop, flip horizontally with probability 1/2 -> `pad_crop`, `hflip`.
- ImageNet-style (Szegedy et al. 2015, "Going deeper with convolutions"): a random crop covering
  8%-100% of the area with aspect ratio in [3/4, 4/3], resized to 224 -> `random_resized_crop`;
  evaluation resizes the shorter side to 256 and takes the central 224 -> `resize_center_crop`.
- `normalize`: uint8 -> float32 (x / 255 - mean) / std, per channel.

All random parameters come from the caller's `torch.Generator`, so a loader can reproduce them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std, computed as one multiply-subtract."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    out = images.to(torch.float32)
    return out.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)


def pad_crop(images: torch.Tensor, offsets_y: torch.Tensor, offsets_x: torch.Tensor,
             padding: int) -> torch.Tensor:
    """Zero-pad (N, C, H, W) by `padding` and crop each image back to H x W at its own offset.

    offsets are in [0, 2 * padding]; offset `padding` on both axes returns the image unchanged.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))  # (N, C, H + 2p, W + 2p)
    rows = (offsets_y.view(n, 1) + torch.arange(h)).view(n, 1, h, 1)  # (N, 1, H, 1)
    cols = (offsets_x.view(n, 1) + torch.arange(w)).view(n, 1, 1, w)  # (N, 1, 1, W)
    flat = padded.reshape(n, c, -1)  # (N, C, (H + 2p) * (W + 2p))
    index = (rows * (w + 2 * padding) + cols).reshape(n, 1, h * w).expand(n, c, h * w)
    return flat.gather(2, index).view(n, c, h, w)


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images (N, C, H, W) where `mask` (N,) is True."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


def default_padding(size: int) -> int:
    """Pad for crop augmentation: 4 pixels for 32x32 (CIFAR), scaled with the side (12 for 96)."""
    return max(1, round(size / 8))


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a uint8 (C, H, W) or (N, C, H, W) tensor to (H', W') = size, kept uint8."""
    batch = image if image.dim() == 4 else image.unsqueeze(0)
    if tuple(batch.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(batch.to(torch.float32), size=size, mode="bilinear", align_corners=False,
                        antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    return out if image.dim() == 4 else out[0]


def resize_shorter(image: torch.Tensor, shorter: int) -> torch.Tensor:
    """Resize (C, H, W) so its shorter side is `shorter`, keeping the aspect ratio."""
    h, w = image.shape[-2:]
    scale = shorter / min(h, w)
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))))


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size window of (..., H, W) (zero-padded when smaller)."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        image = F.pad(image, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top:top + size, left:left + size]


def resize_center_crop(image: torch.Tensor, size: int = 224, resize_to: int | None = None) -> torch.Tensor:
    """ImageNet evaluation: shorter side -> `resize_to` (default size * 256 / 224), central crop."""
    return center_crop(resize_shorter(image, resize_to or round(size * 256 / 224)), size)


def random_resized_crop(image: torch.Tensor, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """A random crop of `scale` of the area and aspect `ratio`, resized to size x size (Szegedy 2015)."""
    h, w = image.shape[-2:]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        cw, ch = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            return resize(image[..., top:top + ch, left:left + cw], (size, size))
    # Fallback after 10 misses (very elongated images): the central square, an allowed aspect ratio.
    return resize(center_crop(image, min(h, w)), (size, size))
