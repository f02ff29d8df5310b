"""An ImageNet-size image folder on this CPU: index build, reopen, and the training loader's throughput.

No ImageNet exists on these machines, so the tree is generated: N JPEGs (default 100,000) in 1,000 class
folders, 160x120 pixels (above the 128-pixel eager limit, so the reader keeps them on disk and decodes
per item, as it would ImageNet; ImageNet's average image is ~400x350, so decoding real images costs
more per item than these). Measured, each in a fresh cache folder:

- `index_cold_s`: `get_dataset("imagefolder", ...)` with no cached index (lists and sorts every class
  folder, writes the index); `index_reopen_s`: the same call again (reads the index, stats the 1,000
  class folders); `full_scan_s`: listing and statting every file (`scan_folder`, what the small-image
  cache key needs), for comparison.
- `rss_after_open_mb`: the process's resident memory with the data set open (no image decoded).
- `decode_alone_img_s`: decode + random-resized-crop to 224 + flip in this one process, no loader;
  `loader_img_s`: `make_loader(train=True, num_workers=W)` batches of 64 at 224x224 (workers decode and
  augment; the main process normalises), both over the same number of images.

    python benchmarks/imagefolder_scale.py --root /tmp/imagenet-like --images 100000 \\
        --out benchmarks/results/imagefolder_scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def generate(root: Path, images: int, classes: int, seed: int = 0) -> float:
    """Write `images` JPEGs into `classes` folders under root/train; returns seconds (skipped if present)."""
    folder = root / "train"
    if folder.is_dir() and sum(1 for _ in os.scandir(folder)) == classes:
        return 0.0
    start, rng = time.perf_counter(), np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 160, dtype=np.float32)[None, :, None]  # (1, W, 1)
    for label in range(classes):
        (folder / f"n{label:08d}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        colour = rng.integers(0, 256, size=(1, 1, 3)).astype(np.float32)
        pixels = colour * ramp + rng.normal(0, 12, size=(120, 160, 3))  # (H, W, 3): a gradient with noise
        path = folder / f"n{i % classes:08d}" / f"img_{i:07d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=40, help="loader batches of 64 timed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ["DEEPSHRINK_CACHE"] = tempfile.mkdtemp(prefix="ds-folder-cache-")  # a cold index
    from deepshrink.data import get_dataset, make_loader
    from deepshrink.data.folder import scan_folder
    from deepshrink.data.loader import _EpochItems

    generated_s = generate(args.root, args.images, args.classes)
    result = {"command": "python benchmarks/" + Path(__file__).name + " " + shlex.join(sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "images": args.images, "classes": args.classes, "image_size": [120, 160],
              "tree_bytes": sum(e.stat().st_size for c in os.scandir(args.root / "train") for e in os.scandir(c)),
              "generated_s": round(generated_s, 1)}
    rss_before = _rss_mb()
    start = time.perf_counter()
    dataset = get_dataset("imagefolder", "train", root=args.root)
    result["index_cold_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    dataset = get_dataset("imagefolder", "train", root=args.root)
    result["index_reopen_s"] = round(time.perf_counter() - start, 3)
    result["rss_after_open_mb"] = round(_rss_mb(), 1)
    result["rss_added_by_open_mb"] = round(_rss_mb() - rss_before, 1)
    start = time.perf_counter()
    scan_folder(args.root / "train")
    result["full_scan_s"] = round(time.perf_counter() - start, 3)
    assert len(dataset) == args.images, len(dataset)

    count = args.batches * 64
    torch.set_num_threads(1)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1))[:count]
    items = _EpochItems(dataset, order, torch.arange(count), "imagenet", 0, 0)
    start = time.perf_counter()
    for j in range(count):
        items[j]
    result["decode_alone_img_s"] = round(count / (time.perf_counter() - start), 1)

    loader = make_loader(dataset, 64, train=True, num_workers=args.workers)
    batches = iter(loader)
    next(batches)  # workers started and warm
    start = time.perf_counter()
    for _ in range(args.batches - 1):
        images, _ = next(batches)
    elapsed = time.perf_counter() - start
    assert images.shape == (64, 3, 224, 224)
    result["loader_workers"] = args.workers
    result["loader_img_s"] = round((args.batches - 1) * 64 / elapsed, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
