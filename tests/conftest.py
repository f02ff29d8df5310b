"""Shared fixtures: the real data sets and reference checkpoint that tests read.

`../shared` (beside the repository) holds the CIFAR-10 JPEG archive and the reference ResNet-20;
Debian's dataset-fashion-mnist package holds Fashion-MNIST (scripts/setup.sh installs it, so a test
that needs it fails when it is missing). A user's clone has no `../shared`: tests that need it skip
with the reason, unless DEEPSHRINK_REQUIRE_SHARED=1 (set by .ci/run), which turns the skip into a
failure so that CI always runs them.
"""
from __future__ import annotations

import fcntl
import os
import random
import shutil
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


@pytest.fixture(scope="module")
def one_thread():
    """Small tensor ops on a shared 2-core machine run far faster on one thread (use it per module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _require(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {how}")
    return path


def _require_shared(path: Path) -> Path:
    """A file under ../shared: skip without it (a user's clone), fail without it under CI."""
    if not path.exists():
        message = f"{path} is missing: these tests need ../shared beside the repository"
        if os.environ.get("DEEPSHRINK_REQUIRE_SHARED") == "1":
            pytest.fail(message + " (DEEPSHRINK_REQUIRE_SHARED=1)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    return _require(FASHION_MNIST, "install Debian's dataset-fashion-mnist (scripts/setup.sh does)")


@pytest.fixture(scope="session")
def resnet20_checkpoint() -> Path:
    return _require_shared(SHARED / "models" / "resnet20-cifar10jpeg.pt")


@pytest.fixture(scope="session")
def cifar10_jpeg_root() -> Path:
    """The CIFAR-10 JPEG folders (train/, test/), unpacked once into a cache shared across runs."""
    return unpack_cifar10_jpeg()


def unpack_cifar10_jpeg() -> Path:
    archive = _require_shared(SHARED / "data" / "cifar10-jpeg.tar.gz")
    target = CACHE / "cifar10-jpeg"
    done = target / ".unpacked"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "cifar10-jpeg.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers unpack once
        if not done.exists():
            tmp = CACHE / "cifar10-jpeg.partial"
            for stale in (tmp, target):  # a cut-off unpack, or a folder unpacked by hand without the marker
                if stale.exists():
                    shutil.rmtree(stale)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            inner = [p for p in tmp.iterdir() if p.is_dir()]
            root = inner[0] if len(inner) == 1 and not (tmp / "train").exists() else tmp
            root.rename(target)
            done.touch()
    return target


@pytest.fixture
def torchrun():
    """`torchrun(args, out, env)`: run `torchrun --nproc_per_node=2 -m deepshrink ARGS --out OUT` on a free
    port and return the CompletedProcess. Ranks run with PYTHONFAULTHANDLER, so a rank killed by a signal
    prints where each of its Python threads was."""
    import socket
    import subprocess
    import sys

    def launch(args, out: Path, env: dict):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                   "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "deepshrink", *args, "--out", str(out)]
        return subprocess.run(command, env={**env, "PYTHONFAULTHANDLER": "1"}, capture_output=True, text=True,
                              timeout=300)

    return launch
