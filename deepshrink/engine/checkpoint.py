"""Checkpoints: written atomically, read with `torch.load(..., weights_only=True)` only.

A training checkpoint is a dict of tensors and primitive containers (never pickled objects)::

    {"format": "deepshrink-checkpoint", "version": 1, "model": state_dict, "optimizer": ...,
     "scheduler": ..., "scaler": ... | None, "epoch": completed epochs, "step": global step,
     "epoch_progress": None at an epoch's end; after Ctrl-C mid-epoch {"batches": done in the epoch,
                       "loss_sum", "extra_sum", "correct", "seen", "seconds": its running sums},
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor...], "numpy": {...}, "python": {...}},
     "loader_seed": int | None, "config": TrainConfig as a dict, "arch": {"name", "kwargs"} | None,
     "data": {"name", "input_shape", "mean", "std", "num_classes", ...} | None,
     "metrics": last epoch's metrics, "best_top1": float | None}

"arch" (how `create_model` built the network) and "data" (`deepshrink.data.data_record`) are what
`recorded_model` reads back, so that commands given such a file need neither --model nor --data.

`load_weights(model, path)` accepts such a checkpoint or a plain `state_dict` file.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.base import DATA_RECORD_KEYS
from ..errors import UserError

FORMAT = "deepshrink-checkpoint"
VERSION = 1


def save_checkpoint(payload: dict, path) -> Path:
    """Write `payload` to `path` via a temporary file in the same folder and `os.replace`.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path) -> dict:
    """Load a `.pt` file safely (weights_only=True); UserError if missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    head = path.read_bytes()[:64] if path.stat().st_size else b""
    if not head:
        raise UserError(f"{path} is empty; give a file written by torch.save(state_dict) or by `deepshrink train`")
    if b'"deepshrink.dsz' in head:
        raise UserError(f"{path} is a packed deepshrink model (.dsz), not a checkpoint; evaluate it with "
                        "`deepshrink eval`, or rebuild it in Python with deepshrink.load(path, decode=True)")
    if not head.startswith(b"PK") and head[0] != 0x80:  # torch.save writes a zip; older files a pickle
        raise UserError(f"{path} is not a PyTorch checkpoint (neither a zip nor a pickle file); give a file "
                        "written by torch.save(state_dict) or by `deepshrink train`")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"refusing to load {path}: it contains pickled objects other than tensors; deepshrink "
                        "never runs code from a file. Save a plain state_dict: torch.save(model.state_dict(), path)"
                        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on foreign bytes (KeyError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {first[:120]}); "
            "give a file written by torch.save(state_dict) or by `deepshrink train`"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a {type(data).__name__}, not a state_dict or deepshrink checkpoint")
    return data


def is_training_checkpoint(data: dict) -> bool:
    return data.get("format") == FORMAT


def recorded_model(data: dict) -> tuple[dict | None, dict]:
    """(architecture, data set) a loaded training checkpoint records: {"name", "kwargs"} for
    `create_model`, or None; and the data set's record (`deepshrink.data.data_record` keys), or {}.
    A plain state_dict records neither.

    Example::

        arch, data = recorded_model(read_checkpoint("runs/lenet5/best.pt"))
        model = create_model(arch["name"], **arch["kwargs"])  # data["name"] == "fashion-mnist"
    """
    if not is_training_checkpoint(data):
        return None, {}
    arch, record = data.get("arch"), data.get("data")
    named = isinstance(arch, dict) and isinstance(arch.get("name"), str)
    arch = {"name": arch["name"], "kwargs": dict(arch.get("kwargs") or {})} if named else None
    if isinstance(record, str):  # a run that recorded only the name
        record = {"name": record}
    record = {k: record[k] for k in DATA_RECORD_KEYS if k in record} if isinstance(record, dict) else {}
    return arch, record


def state_dict_of(data: dict, path="checkpoint") -> dict:
    """The model weights inside a loaded file: our checkpoint, {"state_dict": ...}, or a plain state_dict."""
    if is_training_checkpoint(data):
        state = data["model"]
    elif isinstance(data.get("state_dict"), dict):
        state = data["state_dict"]
    elif isinstance(data.get("model"), dict):
        state = data["model"]
    else:
        state = data
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a model checkpoint: expected a mapping of parameter names to tensors")
    if all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _names(keys, limit=8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state: dict, path="checkpoint") -> None:
    """UserError naming missing, unexpected and mis-shaped keys when `state` is for another model."""
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        parts.append(f"mis-shaped: {'; '.join(shapes[:5])}" + (f" (+{len(shapes) - 5} more)" if len(shapes) > 5 else ""))
    raise UserError(f"{path} does not match this model's architecture ({type(model).__name__}): "
                    + " | ".join(parts) + "; check --model / --model-args")


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load weights from a plain state_dict file or a deepshrink checkpoint into `model` (strict).

    Example::

        model = load_weights(create_model("resnet20", shortcut="B"), "resnet20-cifar10jpeg.pt")
    """
    data = read_checkpoint(path)
    state = state_dict_of(data, path)
    check_state_dict(model, state, path)
    model.load_state_dict(state)
    return model


# ---------------------------------------------------------------- RNG states as tensors
def capture_rng_state() -> dict:
    """torch / CUDA / numpy / python RNG states as tensors and primitives (weights_only-loadable)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
