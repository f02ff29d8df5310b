"""Layer-wise methods under torchrun (gloo on CPU): ranks capture shards of the calibration batches,
all-reduce Hessians and statistics, and N processes write the .dsz that one process writes."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from deepshrink.cli import main
from deepshrink.engine import distributed
from deepshrink.errors import UserError
from deepshrink.layerwise.hessian import HessianAccumulator
from deepshrink.packing.format import read_container

# A ResNet-20 (convs, BatchNorm, shortcuts) on 8x8 digits; 130 calibration images in 9 batches of 16, so
# each of 2 ranks captures 4 or 5 batches; max_samples < the columns of a batch, so the random column
# subset is exercised too.
COMMON = ["compress", "--model", "resnet20", "--model-args", "in_channels=1", "--data", "digits",
          "--set", "calib.ratio=0.1", "--set", "calib.batch_size=16", "--set", "params.max_samples=200"]
METHODS = {
    "ldnq": ["--method", "ldnq", "--set", "params.levels=3", "--set", "params.iterations=10",
             "--set", "params.polish_sweeps=1"],
    "lobs": ["--method", "lobs", "--set", "params.sparsity=0.6"],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a SIGABRT shows its Python stacks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_process(args, out) -> dict:
    """The reference: `deepshrink compress` in this process, on one thread like each torchrun rank."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(COMMON + args + ["--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "metrics.json").read_text())


def _assert_same_file(path, reference) -> None:
    """Every code is identical; float tensors (scales, BatchNorm statistics) equal up to summation order."""
    (meta, blobs, _), (ref_meta, ref_blobs, _) = read_container(path), read_container(reference)
    assert _layout(meta) == _layout(ref_meta)  # same encodings at the same offsets, checksums aside
    assert blobs.keys() == ref_blobs.keys()
    for key, value in blobs.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, ref_blobs[key], rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(value, ref_blobs[key]), f"{key}: the codes differ"


def _layout(meta):
    """The file's metadata without its checksums ("c"), which differ wherever a float differs in its last bit."""
    if isinstance(meta, dict):
        return {key: _layout(value) for key, value in meta.items() if key != "c"}
    if isinstance(meta, list):
        return [_layout(value) for value in meta]
    return meta


@pytest.fixture(scope="module")
def single_ldnq(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "ldnq"
    return out, _one_process(METHODS["ldnq"], out)


def test_the_hessian_from_shards_equals_the_hessian_from_all_batches():
    """Batch i keeps the same random columns (max_samples) whichever rank captures it."""
    batches = [torch.randn(1, 50, 4, dtype=torch.float64) for _ in range(5)]  # (G, N, D) columns

    def accumulate(indices):
        acc = HessianAccumulator(1, 4, bias=True, max_samples=20, seed=3)
        for index in indices:
            acc.start_batch(index)
            acc.add(batches[index])
        return acc

    whole, even, odd = accumulate(range(5)), accumulate([0, 2, 4]), accumulate([1, 3])
    assert even.count + odd.count == whole.count == 100
    torch.testing.assert_close(even.sum + odd.sum, whole.sum, rtol=1e-12, atol=1e-12)


def test_fewer_calibration_batches_than_processes_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    with pytest.raises(UserError, match="3 calibration batch.*4 processes.*calib.batch_size"):
        distributed.shard(3)
    assert list(distributed.shard(9)) == [0, 4, 8]  # rank 0 of 4


@pytest.mark.parametrize("method", ["ldnq", "lobs"])
def test_two_processes_write_the_codes_one_process_writes(method, tmp_path, single_ldnq, torchrun):
    done = torchrun(COMMON + METHODS[method], tmp_path / "ddp", ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"{method}: test top-1") == 1  # only rank 0 reports
    if method == "ldnq":
        single_out, single = single_ldnq
    else:
        single_out = tmp_path / "single"
        single = _one_process(METHODS[method], single_out)
    _assert_same_file(tmp_path / "ddp" / "model.dsz", single_out / "model.dsz")
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for key in ("top1", "top5", "val_top1", "base_top1"):  # the evaluation shards add up to the whole set
        assert ddp[key] == single[key], key


def test_two_nodes_with_a_c10d_rendezvous_equal_one_process(tmp_path, single_ldnq):
    """Two torchrun launchers, one process each, meet at a c10d rendezvous on 127.0.0.1 as two machines would."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
              "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=two-nodes",
              "-m", "deepshrink"] + COMMON + METHODS["ldnq"] + ["--out", str(tmp_path / "nodes")]
    nodes = [subprocess.Popen(launch, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert sum(out.count("ldnq: test top-1") for out, _ in outputs) == 1  # one global rank 0
    single_out, single = single_ldnq
    _assert_same_file(tmp_path / "nodes" / "model.dsz", single_out / "model.dsz")
    assert json.loads((tmp_path / "nodes" / "metrics.json").read_text())["top1"] == single["top1"]
