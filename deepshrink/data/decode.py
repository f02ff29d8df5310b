"""Decode encoded images (JPEG/PNG files or bytes) into uint8 (C, H, W) tensors, alone or in bulk.

Bulk decoding runs in a small process pool (2 workers by default: the machines this runs on are
small and shared) and returns one (N, C, H, W) tensor.
"""
from __future__ import annotations

import io
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


def decode_image(source, channels: int = 3, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode a path or encoded bytes into a uint8 (C, H, W) tensor with `channels` (1 or 3).

    `size` = (H, W) resizes (bilinear) when the image is not already that size.

    Example::

        img = decode_image("train/cat/0001.jpg")   # uint8 (3, 32, 32)
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview))
                        else source) as pil:
            pil = pil.convert("L" if channels == 1 else "RGB")
            if size is not None and pil.size != (size[1], size[0]):
                pil = pil.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(pil, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        where = source if isinstance(source, (str, Path)) else f"{len(source)} bytes"
        raise UserError(f"cannot decode image {where}: {exc}; remove or replace the file") from exc
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)


def _decode_chunk(args) -> np.ndarray:
    sources, channels, size = args
    out = np.empty((len(sources), channels, size[0], size[1]), dtype=np.uint8)
    for i, source in enumerate(sources):
        out[i] = decode_image(source, channels, size).numpy()
    return out


def decode_all(sources: list, channels: int, size: tuple[int, int], workers: int | None = None) -> torch.Tensor:
    """Decode every source into one uint8 tensor (N, C, H, W), resizing to `size` where needed.

    `workers` processes share the work (default: `DEEPSHRINK_DECODE_WORKERS`, else 2).
    """
    if workers is None:
        workers = int(os.environ.get("DEEPSHRINK_DECODE_WORKERS", "2"))
    n = len(sources)
    if n == 0:
        return torch.empty((0, channels, *size), dtype=torch.uint8)
    chunk = max(256, n // (8 * max(workers, 1)) + 1)
    jobs = [(sources[i:i + chunk], channels, tuple(size)) for i in range(0, n, chunk)]
    if workers <= 1 or len(jobs) == 1:
        parts = [_decode_chunk(job) for job in jobs]
    else:
        # fork keeps start-up cheap; decoding touches no torch state, so forking is safe here.
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with context.Pool(workers) as pool:
            parts = pool.map(_decode_chunk, jobs)
    return torch.from_numpy(np.concatenate(parts))


def image_size_of(source) -> tuple[int, int]:
    """(H, W) of an image file or bytes, reading only its header."""
    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as pil:
        return pil.size[1], pil.size[0]


def image_mode_channels(source) -> int:
    """1 for grey-scale images, 3 for anything else (colour is converted to RGB)."""
    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as pil:
        return 1 if pil.mode in ("L", "1", "I;16", "I", "F") else 3
