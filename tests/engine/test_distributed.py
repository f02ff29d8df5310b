"""Two DDP processes (torchrun, gloo on CPU) follow the single-process run with the same global batch."""
import os
import socket
import subprocess
import sys

import torch

from deepshrink.cli import main

ARGS = ["train", "--model", "lenet300", "--model-args", "input_size=8", "--data", "digits", "--epochs", "1",
        "--lr", "0.05", "--max-steps-per-epoch", "12", "--seed", "1"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_matches_single_process_with_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
              "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "deepshrink"]
    done = subprocess.run(launch + ARGS + ["--batch-size", "16", "--out", str(tmp_path / "ddp"), "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
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
