"""An ONNX file that `deepshrink export` wrote (with or without --integer), run by ONNX Runtime as a module.

`deepshrink eval model.onnx` scores it like a `.dsz` file: the data set, input shape and normalisation
come from the metadata the export wrote (`deepshrink.name`, ...), and ONNX Runtime computes the logits,
so the figure is what a deployment of that file gets on this CPU.

Example::

    model = OnnxModel("model.int8.onnx")    # model(images) -> logits, on ONNX Runtime's CPU kernels
    recorded_data("model.int8.onnx")        # {"name": "cifar10", "input_shape": [3, 32, 32], ...}
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

_DATA_KEYS = ("name", "input_shape", "mean", "std", "num_classes")  # what `.dsz` files record of their data


def _load(path):
    import onnx

    if not Path(path).is_file():
        raise UserError(f"{path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is not ONNX
        raise UserError(f"{path} is not a readable ONNX file ({type(exc).__name__}); give a file written by "
                        "`deepshrink export`") from None


def recorded_data(path) -> dict:
    """The data set an exported ONNX file records in its `deepshrink.*` metadata; {} when none."""
    entries = {p.key: p.value for p in _load(path).metadata_props}
    return {key: json.loads(entries[f"deepshrink.{key}"]) for key in _DATA_KEYS if f"deepshrink.{key}" in entries}


class OnnxModel(nn.Module):
    """Calls an ONNX file's graph on ONNX Runtime (CPU execution provider): float NCHW in, logits out."""

    def __init__(self, path, threads: int | None = None):
        super().__init__()
        from .ort_engine import OrtRunner, _onnxruntime

        if _onnxruntime() is None:
            raise UserError("running an ONNX file needs onnxruntime: pip install onnxruntime")
        graph = _load(path)
        try:
            self.runner = OrtRunner(graph.SerializeToString(), threads or torch.get_num_threads())
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own reason, on one line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: ONNX Runtime cannot run it: {reason}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x.detach().cpu())
