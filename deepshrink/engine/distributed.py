"""Multi-process data-parallel training (PyTorch DDP, Li et al. 2020, "PyTorch Distributed").

`torchrun --nproc_per_node=2 -m deepshrink train ...` sets RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT; `init_from_env` joins the process group (gloo on CPU, nccl on CUDA). Each rank reads its
own shard of the training set (`make_loader(..., rank=, world_size=)`), gradients are averaged by
DDP, so N processes with per-process batch b follow the same trajectory as one process with batch
N*b (for models without batch-norm; BN statistics stay per process).

Layer-wise methods and evaluation use the collectives below instead of DDP: each rank works on its
`shard` of the batches and the sums (Hessians, statistics, correct counts) are added with
`all_reduce_sum`; `broadcast_object` hands rank 0's result (a layer's solution, the packed file) to all.
"""
from __future__ import annotations

import importlib
import os

import torch
import torch.distributed as dist

from ..errors import UserError


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device=None) -> bool:
    """Join the process group described by torchrun's environment; False when not distributed.

    The backend is nccl for a CUDA device, gloo otherwise. Calling it twice is harmless.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if env_world_size() <= 1 or not dist.is_available():
        return False
    cuda = device is not None and torch.device(device).type == "cuda"
    # Imported before the group exists, not lazily after: torch.distributed.fsdp, which torch._dynamo imports
    # on first use (building a model under the meta device, as `deepshrink.load` does, is one such use), keeps
    # a group that exists when it is imported alive past destroy_process_group (torch 2.13). The gloo worker
    # threads of such a group then free finished work during interpreter shutdown, and a thread that needs the
    # GIL there is ended by CPython inside a C++ destructor: std::terminate, "terminate called without an
    # active exception", SIGABRT on a rank that finished its work (seen in core dumps of torchrun ranks).
    importlib.import_module("torch._dynamo")

    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank on this machine (torchrun's LOCAL_RANK): picks the CUDA device."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the process that logs and writes checkpoints."""
    return rank() == 0


def sum_across_ranks(value: float, device) -> float:
    """The sum of a scalar over all ranks (the value itself when not distributed)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor)


def _collective_device() -> torch.device:
    """Where collective tensors must live: the rank's GPU under nccl, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Replace each tensor, in place, by its sum over all ranks (no-op when not distributed).

    Every rank gets the same bits back, so ranks that go on computing from the sums stay identical.

    Example::

        count = torch.tensor([float(n)], dtype=torch.float64)
        all_reduce_sum(hessian_sum, count)
    """
    if not is_distributed():
        return
    device = _collective_device()
    for tensor in tensors:
        moved = tensor.to(device)
        dist.all_reduce(moved)
        if moved is not tensor:
            tensor.copy_(moved)


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` (any picklable object, e.g. a layer's solution) on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, device=_collective_device())
    return holder[0]


def shard(count: int) -> range:
    """The indices of `count` items (calibration batches) this rank takes: rank, rank + world, ...

    Raises UserError when there are fewer items than processes (a rank would have nothing to do).
    """
    world = world_size()
    if count < world:
        raise UserError(f"{count} calibration batch(es) for {world} processes: every process needs at least one; "
                        "lower calib.batch_size or raise the calibration set (calib.ratio / calib.per_class)")
    return range(rank(), count, world)


def cleanup() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()
