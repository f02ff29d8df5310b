"""CIFAR python batches through the restricted unpickler; malicious pickles are refused."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from deepshrink.data import get_dataset
from deepshrink.data.cifar import restricted_load, write_cifar_batch
from deepshrink.errors import UserError


def _write_cifar10(folder, per_batch=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        write_cifar_batch(folder / name, images, labels)
        batches[name] = (images, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    return batches


def test_cifar10_batches(tmp_path):
    batches = _write_cifar10(tmp_path / "cifar-10-batches-py")
    train = get_dataset("cifar10", "train", root=tmp_path)
    test = get_dataset("cifar10", "test", root=tmp_path / "cifar-10-batches-py")
    assert train.images.shape == (20, 3, 32, 32) and len(test) == 4
    images, labels = batches["data_batch_2"]
    assert torch.equal(train.images[4:8], torch.from_numpy(images))  # batches concatenated in order 1..5
    assert train.targets[4:8].tolist() == labels.tolist()
    assert train.classes[0] == "airplane" and train.mean == (0.4914, 0.4822, 0.4465)
    assert train.std == (0.247, 0.243, 0.261)


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = np.full((3, 3, 32, 32), 7, dtype=np.uint8)
    for split in ("train", "test"):
        write_cifar_batch(folder / split, images, [99, 0, 42], label_key="fine_labels")
    ds = get_dataset("cifar100", "test", root=tmp_path)
    assert ds.num_classes == 100 and ds.targets.tolist() == [99, 0, 42]
    assert int(ds.images.sum()) == 7 * images.size


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({b"data": _Exploit(), b"labels": [0]}, protocol=2)
    with pytest.raises(UserError, match=r"refusing to unpickle (posix|os)\.system"):
        restricted_load(payload)
    assert not (tmp_path / "pwned-by-pickle").exists()
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(UserError, match="refusing"):
        get_dataset("cifar10", "test", root=tmp_path)


def test_restricted_unpickler_refuses_builtins_eval():
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(UserError, match="builtins.eval"):
        restricted_load(payload)
