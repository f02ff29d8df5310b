"""Shared fixtures: the real data sets and reference checkpoint that tests read.

`../shared` (beside the repository) holds the CIFAR-10 JPEG archive and the reference ResNet-20;
Debian's dataset-fashion-mnist package holds Fashion-MNIST. Tests that need one of them fail with
a message saying how to get it, rather than skipping: CI always has them.
"""
from __future__ import annotations

import fcntl
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPSHRINK_SHARED", REPO.parent / "shared"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path(os.environ.get("DEEPSHRINK_CACHE", Path.home() / ".cache" / "deepshrink"))

torch.set_num_threads(min(2, torch.get_num_threads()))

# The suite is deterministic: property tests draw the same examples on every run (a CI run must not
# fail on a draw nobody can reproduce). `HYPOTHESIS_PROFILE=explore` draws afresh on every run (run it
# in a loop to search); a failure it finds is printed with its example, which then becomes a regression test.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whatever ran before it or in what order."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def _require(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {how}")
    return path


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    return _require(FASHION_MNIST, "install Debian's dataset-fashion-mnist (scripts/setup.sh does)")


@pytest.fixture(scope="session")
def resnet20_checkpoint() -> Path:
    return _require(SHARED / "models" / "resnet20-cifar10jpeg.pt", "expected ../shared/models beside the repo")


@pytest.fixture(scope="session")
def cifar10_jpeg_root() -> Path:
    """The CIFAR-10 JPEG folders (train/, test/), unpacked once into a cache shared across runs."""
    return unpack_cifar10_jpeg()


def unpack_cifar10_jpeg() -> Path:
    archive = _require(SHARED / "data" / "cifar10-jpeg.tar.gz", "expected ../shared/data beside the repo")
    target = CACHE / "cifar10-jpeg"
    done = target / ".unpacked"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "cifar10-jpeg.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers unpack once
        if not done.exists():
            tmp = CACHE / "cifar10-jpeg.partial"
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            inner = [p for p in tmp.iterdir() if p.is_dir()]
            root = inner[0] if len(inner) == 1 and not (tmp / "train").exists() else tmp
            root.rename(target)
            done.touch()
    return target
