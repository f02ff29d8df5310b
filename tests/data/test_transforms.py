"""Tensor transforms against independent computations."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deepshrink.data.transforms import (center_crop, hflip, pad_crop, random_resized_crop, resize_center_crop,
                                        resize_shorter)


def test_pad_crop_matches_slicing_a_padded_image():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    oy, ox = torch.tensor([0, 4, 8, 2, 4]), torch.tensor([8, 4, 0, 6, 1])
    out = pad_crop(images, oy, ox, 4)
    padded = F.pad(images, (4, 4, 4, 4))
    for i in range(5):
        assert torch.equal(out[i], padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8])
    assert torch.equal(out[1], images[1])  # offset = padding: unchanged


def test_hflip_mirrors_only_masked_images():
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).view(2, 1, 2, 3)
    out = hflip(images, torch.tensor([True, False]))
    assert out[0, 0, 0].tolist() == [2, 1, 0] and torch.equal(out[1], images[1])


def test_imagenet_eval_crop_sizes():
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert resize_shorter(image, 256).shape == (3, 256, 341)
    out = resize_center_crop(image, 224)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert torch.equal(center_crop(image, 100), image[:, 100:200, 150:250])


def test_random_resized_crop_is_seeded_and_sized():
    image = torch.randint(0, 256, (3, 120, 90), dtype=torch.uint8)
    a = random_resized_crop(image, 64, torch.Generator().manual_seed(1))
    b = random_resized_crop(image, 64, torch.Generator().manual_seed(1))
    c = random_resized_crop(image, 64, torch.Generator().manual_seed(2))
    assert a.shape == (3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    # A flat image stays flat whatever the crop (the resize interpolates, it does not invent values).
    flat = torch.full((1, 50, 70), 93, dtype=torch.uint8)
    assert torch.all(random_resized_crop(flat, 32, torch.Generator().manual_seed(0)) == 93)
