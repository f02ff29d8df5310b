"""CIFAR-10 / CIFAR-100 python batches (Krizhevsky 2009), read through a restricted unpickler.

The official `cifar-10-batches-py/` holds `data_batch_1..5`, `test_batch` and `batches.meta`;
`cifar-100-python/` holds `train`, `test` and `meta`. Each is a pickled dict whose `data` is a
uint8 array (N, 3072) = (N, 3, 32, 32) in C order and whose labels are a list of ints.

Pickles can run arbitrary code, so `RestrictedUnpickler` admits only what these files contain:
dicts, lists, bytes, str, ints and numpy arrays (rebuilt through numpy's own reconstructors).
Anything else (os.system, builtins.eval, ...) raises `UserError`.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import STATS, DatasetMeta, TensorImageDataset

# The globals numpy arrays need when pickled (numpy 1.x and 2.x module names).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}

_LAYOUT = {
    "cifar10": {"dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "labels": b"labels", "names": b"label_names"},
    "cifar100": {"dir": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "labels": b"fine_labels", "names": b"fine_label_names"},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy's array reconstructors."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UserError(f"refusing to unpickle {module}.{name}: CIFAR batches contain only dicts, lists, "
                        "bytes and numpy arrays; this file is not a CIFAR batch (or it was tampered with)")


def restricted_load(data: bytes):
    """Unpickle `data` (latin-1 strings, as the Python-2 CIFAR pickles need) allowing only plain data."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is a user error
        raise UserError(f"cannot read CIFAR batch: {exc}") from exc


def find_batches(root: Path, name: str, split: str) -> Path | None:
    """The folder holding `name`'s python batches for `split` (root itself or root/<official dir>)."""
    layout = _LAYOUT[name]
    for folder in (root, root / layout["dir"]):
        if all((folder / f).is_file() for f in layout[split]):
            return folder
    return None


def _get(batch: dict, key: bytes):
    return batch[key] if key in batch else batch.get(key.decode())


def read_cifar(root: str | Path, name: str, split: str) -> TensorImageDataset:
    """The `split` of CIFAR-10 ("cifar10") or CIFAR-100 ("cifar100") from its python batches."""
    layout = _LAYOUT[name]
    folder = find_batches(Path(root), name, split)
    if folder is None:
        raise UserError(f"{root} has no {layout['dir']}/{layout[split][0]}")
    images, labels = [], []
    for file in layout[split]:
        batch = restricted_load((folder / file).read_bytes())
        data, batch_labels = _get(batch, b"data"), _get(batch, layout["labels"])
        if data is None or batch_labels is None:
            raise UserError(f"{folder / file} lacks 'data' or '{layout['labels'].decode()}'")
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))  # (N, 3072) -> (N, C, H, W)
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    classes = _class_names(folder / layout["meta"], layout["names"], 10 if name == "cifar10" else 100)
    mean, std = STATS[name]
    meta = DatasetMeta(name, split, classes, mean, std, augment="cifar")
    return TensorImageDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                              meta)


def _class_names(meta_file: Path, key: bytes, count: int) -> tuple[str, ...]:
    if not meta_file.is_file():
        return tuple(str(i) for i in range(count))
    names = _get(restricted_load(meta_file.read_bytes()), key) or []
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return tuple(names) if len(names) == count else tuple(str(i) for i in range(count))


def write_cifar_batch(path: str | Path, images: np.ndarray, labels, label_key: str = "labels") -> None:
    """Write a batch in the official format (for tests/tools): images uint8 (N, 3, 32, 32)."""
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)  # (N, 3072)
    batch = {b"batch_label": b"written by deepshrink", label_key.encode(): [int(x) for x in labels],
             b"data": data, b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
    Path(path).write_bytes(pickle.dumps(batch, protocol=2))
