"""Limited-data subsets: a stratified, seeded sample of a data set, saved as an index file.

Layer-wise post-training methods calibrate on 1% of the training set (`subset(train, ratio=0.01)`).
The chosen indices are written to a JSON file (by default under `~/.cache/deepshrink/subsets/`,
named after the data set, its size, the request and the seed) and read back on later calls, so
every run uses the same images; `resample=True` draws a fresh subset and overwrites the file.

Per class c with n_c images: k_c = max(1, round(ratio * n_c)) images (or k_c = per_class), drawn
without replacement by a generator seeded with `seed`.

Example::

    calib = subset(get_dataset("cifar10", "train"), ratio=0.01, seed=0)   # 500 images, 50 per class
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import torch

from ..errors import UserError
from .roots import cache_dir


def stratified_indices(targets: torch.Tensor, num_classes: int, ratio: float | None = None,
                       per_class: int | None = None, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a stratified sample: `ratio` of each class, or `per_class` images of each."""
    if (ratio is None) == (per_class is None):
        raise UserError("give exactly one of ratio (0 < ratio <= 1) or per_class (images per class)")
    if ratio is not None and not 0 < ratio <= 1:
        raise UserError(f"subset ratio must be in (0, 1], got {ratio}")
    if per_class is not None and per_class < 1:
        raise UserError(f"per_class must be >= 1, got {per_class}")
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(targets == c).flatten()
        n_c = members.numel()
        if n_c == 0:
            continue
        k = max(1, round(ratio * n_c)) if ratio is not None else per_class
        if k > n_c:
            raise UserError(f"class {c} has only {n_c} images, cannot take per_class={per_class}; "
                            f"use per_class <= {n_c} or ratio=")
        chosen.append(members[torch.randperm(n_c, generator=generator)[:k]])
    return torch.cat(chosen).sort().values


def _fingerprint(dataset) -> str:
    """A short hash of the data set's identity (name, split, size, labels) for index-file names."""
    digest = hashlib.sha256(f"{dataset.name}|{dataset.split}|{len(dataset)}".encode())
    digest.update(dataset.targets.numpy().tobytes())
    return digest.hexdigest()[:12]


def default_index_file(dataset, ratio, per_class, seed, purpose: str = "") -> Path:
    """Where `subset` keeps the indices of this request (`purpose` keeps e.g. the validation split apart)."""
    what = purpose + (f"ratio{ratio:g}" if ratio is not None else f"per{per_class}")
    return cache_dir() / "subsets" / f"{dataset.name}-{dataset.split}-{_fingerprint(dataset)}-{what}-seed{seed}.json"


def subset(dataset, ratio: float | None = None, per_class: int | None = None, seed: int = 0,
           resample: bool = False, index_file: str | Path | None = None):
    """A stratified subset of `dataset` (same classes, statistics and attributes), reused across runs.

    The indices are read from `index_file` (default: see `default_index_file`) when it exists and
    matches the data set; otherwise drawn with `seed` and saved there. `resample=True` draws a new
    subset from a fresh random seed and overwrites the file, so later calls reuse the new one.
    """
    return dataset.select(subset_indices(dataset, ratio, per_class, seed, resample, index_file))


def subset_indices(dataset, ratio: float | None = None, per_class: int | None = None, seed: int = 0,
                   resample: bool = False, index_file: str | Path | None = None) -> torch.Tensor:
    """The sorted indices `subset` selects: read from `index_file` when it matches, else drawn and saved."""
    path = Path(index_file) if index_file is not None else default_index_file(dataset, ratio, per_class, seed)
    fingerprint = _fingerprint(dataset)
    indices = None if resample else _read_index(path, fingerprint, len(dataset))
    if indices is None:
        draw_seed = secrets.randbits(62) if resample else int(seed)
        indices = stratified_indices(dataset.targets, dataset.num_classes, ratio, per_class, draw_seed)
        _write_index(path, {"dataset": dataset.name, "split": dataset.split, "fingerprint": fingerprint,
                            "ratio": ratio, "per_class": per_class, "seed": draw_seed,
                            "indices": indices.tolist()})
    return indices


def _read_index(path: Path, fingerprint: str, n: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        indices = torch.tensor(record["indices"], dtype=torch.int64)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"subset index file {path} is damaged ({exc}); delete it or pass resample=True") from exc
    if record.get("fingerprint") != fingerprint or (indices.numel() and int(indices.max()) >= n):
        raise UserError(f"subset index file {path} was made for another data set "
                        f"({record.get('dataset')}/{record.get('split')}); delete it or pass resample=True")
    return indices


def _write_index(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
