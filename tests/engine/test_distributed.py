"""Two DDP processes (torchrun, gloo on CPU) follow the single-process run with the same global batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepshrink.cli import main

REPO = Path(__file__).resolve().parents[2]
ARGS = ["train", "--model", "lenet300", "--model-args", "input_size=8", "--data", "digits", "--epochs", "1",
        "--lr", "0.05", "--max-steps-per-epoch", "12", "--seed", "1"]


def test_two_process_ddp_matches_single_process_with_the_same_global_batch(tmp_path, torchrun):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = torchrun(ARGS + ["--batch-size", "16", "--json"], tmp_path / "ddp", env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"steps": 12') == 1  # only rank 0 reports
    assert main(ARGS + ["--batch-size", "32", "--out", str(tmp_path / "single")]) == 0

    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    assert ddp["step"] == single["step"] == 12
    assert ddp["model"].keys() == single["model"].keys()
    for name, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert ddp["metrics"]["train_loss"] == single["metrics"]["train_loss"] or abs(
        ddp["metrics"]["train_loss"] - single["metrics"]["train_loss"]) < 1e-6  # rank losses averaged


COMPRESS = ["compress", "--method", "bwn", "--model", "lenet300", "--model-args", "input_size=8", "--data", "digits",
            "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=12", "--set", "train.lr=0.05",
            "--set", "train.seed=1"]


def test_compress_under_torchrun_trains_data_parallel_and_equals_one_process(tmp_path, torchrun):
    """`torchrun -m deepshrink compress`: the loaders are split by rank, rank 0 alone writes the run folder,
    and 2 processes x 16 images give the model 1 process x 32 images gives."""
    import deepshrink

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = torchrun(COMPRESS + ["--set", "train.batch_size=16"], tmp_path / "ddp", env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("bwn: test top-1") == 1  # only rank 0 reports
    assert main(COMPRESS + ["--set", "train.batch_size=32", "--out", str(tmp_path / "single")]) == 0
    ddp = deepshrink.load(tmp_path / "ddp" / "model.dsz")
    single = deepshrink.load(tmp_path / "single" / "model.dsz")
    x = torch.rand(64, 1, 8, 8)
    torch.testing.assert_close(ddp(x), single(x), rtol=1e-4, atol=1e-4)


RANK_THREADS = """import json, os, sys
from deepshrink.cli import main
code = main(sys.argv[1:])
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(os.environ["THREADS_OUT"], "rank" + os.environ["RANK"] + ".json"), "w") as file:
    json.dump(sorted(n for n in names if "gloo" in n), file)  # a file per rank: their stdout lines interleave
sys.exit(code)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the process's threads from Linux /proc")
def test_no_gloo_thread_outlives_a_torchrun_compress(tmp_path):
    """Each rank ends its process group before it exits: a gloo worker thread left running into interpreter
    shutdown is what aborted ranks with "terminate called without an active exception". Loading the packed
    ResNet (built under the meta device, which imports torch._dynamo) used to keep the group alive."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_THREADS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                           "--master_addr=127.0.0.1", f"--master_port={port}", str(script), "compress", "--method", "fp32",
                           "--model", "resnet20", "--model-args", "in_channels=1", "--data", "digits",
                           "--out", str(tmp_path / "run")],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                               "THREADS_OUT": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    left = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    assert left == {0: [], 1: []}  # e.g. ['gloo_tcp_loop', 'pt_gloo_runloop', 'pt_gloo_runloop'] before the fix
