"""A generated ImageNet-like image folder: the data of suites that measure time and memory at ImageNet size on a
machine with no ImageNet.

    data:
      name: imagefolder
      generate: {train: 100000, test: 1000, classes: 1000, size: [160, 120]}   # JPEGs, width x height

The tree `<folder>/train/<class>/*.jpg` and `<folder>/val/<class>/*.jpg` (ImageNet's layout, read by
`deepshrink.data.folder`) is written once, deterministically from the suite's seed: image i of a split is a
colour gradient with Gaussian noise drawn from a generator seeded with (seed, split, i), so the same settings
give the same pixels on any machine, whatever was interrupted. `folder_for` names where it goes: `data.root`
when the suite gives one, else `~/.cache/deepshrink/generated/imagenet-like-<hash of the settings and seed>`,
never a results folder. A marker file written last says the tree is complete; a complete tree is reused, an
incomplete one (a generation cut off) is written again, and a folder holding anything else is refused.

These images are not ImageNet and their classes mean nothing: a suite on them reports time and memory (and
agreement with its own float network), never an accuracy. 160x120 is above the 128-pixel limit under which
image folders are decoded into memory, so the reader keeps these on disk and decodes per item, as it would
ImageNet (ImageNet's average image is ~400x350: decoding real images costs more per item).

Example::

    spec = parse_generate({"train": 64, "test": 16, "classes": 4, "size": [160, 120]}, "suite")
    folder = ensure_folder(spec, seed=0)     # generated on first use, reused after
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError

MARKER = ".deepshrink-generated.json"  # written last: the tree below is complete
_VERSION = 1  # of the pixel recipe below: a change means new folders (and new row keys)
_SPLITS = (("train", "train"), ("test", "val"))  # draw split -> folder name (ImageNet calls its test split val)


@dataclass(frozen=True)
class GeneratedFolder:
    """How many JPEGs of which size in how many classes; `train` and `test` images (the test split is
    written as `val/`, as ImageNet's). Images are spread over the classes in turn (image i -> class i % C)."""

    train: int
    test: int
    classes: int
    width: int = 160
    height: int = 120
    quality: int = 85  # JPEG quality

    def identity(self) -> dict:
        """What the folder's pixels depend on (with the seed): part of the row key of every suite using it."""
        return {**asdict(self), "version": _VERSION}

    def describe(self) -> str:
        """'a generated folder of 100,000 + 1,000 JPEGs (160x120) in 1,000 classes'."""
        return (f"a generated folder of {self.train:,} + {self.test:,} JPEGs ({self.width}x{self.height}) in "
                f"{self.classes:,} classes")


def parse_generate(raw, where: str) -> GeneratedFolder | None:
    """`data.generate` of a suite; every mistake is a one-line UserError naming the key."""
    if raw is None:
        return None
    allowed = {"train", "test", "classes", "size", "quality"}
    if not isinstance(raw, dict) or set(raw) - allowed or not {"train", "test", "classes"} <= set(raw):
        raise UserError(f"{where}: data.generate must be {{train: N, test: N, classes: C, size: [W, H], quality: Q}} "
                        f"(train, test and classes required), got {raw!r}")
    for key in ("train", "test", "classes"):
        if not _positive_int(raw[key]):
            raise UserError(f"{where}: data.generate.{key} must be a positive integer, got {raw[key]!r}")
    if raw["classes"] > min(raw["train"], raw["test"]):
        raise UserError(f"{where}: data.generate.classes ({raw['classes']}) must be at most train and test, so that "
                        "every class folder holds an image of each split")
    size = raw.get("size", [160, 120])
    if not isinstance(size, list) or len(size) != 2 or not all(_positive_int(s) and s >= 8 for s in size):
        raise UserError(f"{where}: data.generate.size must be [width, height] in pixels (each >= 8), got {size!r}")
    quality = raw.get("quality", 85)
    if not _positive_int(quality) or quality > 100:
        raise UserError(f"{where}: data.generate.quality must be a JPEG quality 1..100, got {quality!r}")
    return GeneratedFolder(raw["train"], raw["test"], raw["classes"], size[0], size[1], quality)


def folder_for(spec: GeneratedFolder, seed: int, root=None) -> Path:
    """Where the tree of `spec` and `seed` lives: `root` when given, else a folder of the deepshrink cache named
    after the settings (two suites with the same settings share it)."""
    if root is not None:
        return Path(root).expanduser()
    from ..data.roots import cache_dir

    tag = hashlib.sha256(json.dumps({**spec.identity(), "seed": seed}, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "generated" / f"imagenet-like-{tag}"


def ensure_folder(spec: GeneratedFolder, seed: int, root=None) -> Path:
    """The generated tree of `spec` and `seed` (see `folder_for`), written first when it is not complete.

    Raises UserError when the folder holds something else: another generated tree, or files this did not write."""
    folder = folder_for(spec, seed, root)
    wanted = {"spec": spec.identity(), "seed": seed}
    if _marker(folder) == {**wanted, "complete": True}:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:  # a second process waits, then finds the tree complete
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = _marker(folder)
        if marker == {**wanted, "complete": True}:
            return folder
        strangers = [p.name for p in folder.iterdir() if p.name not in (MARKER, ".lock")]
        if (marker is None and strangers) or (marker is not None and {**marker, "complete": False} !=
                                              {**wanted, "complete": False}):
            raise UserError(f"{folder} holds other files than the generated images of this suite "
                            f"({', '.join(sorted(strangers)[:3]) or MARKER}); give data.root an empty folder or "
                            "leave it null (the deepshrink cache)")
        _write_marker(folder, {**wanted, "complete": False})
        generate(folder, spec, seed)
        _write_marker(folder, {**wanted, "complete": True})
    return folder


def generate(folder: Path, spec: GeneratedFolder, seed: int) -> None:
    """Write every image of `spec` under `folder` (existing files of the same names are overwritten)."""
    import numpy as np
    from PIL import Image

    from ..progress import Progress

    ramp = np.linspace(0, 1, spec.width, dtype=np.float32)[None, :, None]  # (1, W, 1)
    total = spec.train + spec.test
    with Progress(f"generating {folder}", total, "image") as progress:
        for split_index, (split, name) in enumerate(_SPLITS):
            for label in range(spec.classes):
                (folder / name / _class_name(label)).mkdir(parents=True, exist_ok=True)
            for i in range(getattr(spec, split)):
                rng = np.random.default_rng([seed, split_index, i])
                colour = rng.integers(0, 256, size=(1, 1, 3)).astype(np.float32)
                noise = rng.normal(0, 12, size=(spec.height, spec.width, 3))
                pixels = colour * ramp + noise  # (H, W, 3): a gradient of one colour, with noise
                path = folder / name / _class_name(i % spec.classes) / f"img_{i:07d}.jpg"
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=spec.quality)
                progress.update()


def _class_name(label: int) -> str:
    return f"n{label:08d}"  # ImageNet's synset-like names, sorted in label order


def _marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(folder: Path, record: dict) -> None:
    tmp = folder / f"{MARKER}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(record, sort_keys=True))
    os.replace(tmp, folder / MARKER)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
