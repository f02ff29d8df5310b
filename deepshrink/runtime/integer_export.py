"""The integer engine's graph as a file: `deepshrink export FILE.dsz -o FILE.onnx --integer`.

`deepshrink export` alone writes a weight-only graph (integer codes + DequantizeLinear feeding float
convs): small on disk, but ONNX Runtime folds those DequantizeLinears into float weights and runs it at
float speed. This writes instead the QDQ graph the `onnxruntime-int8` engine runs (qdq_graph.py): the
codes as int8 behind DequantizeLinear, every conv / linear / Add input and output between a
QuantizeLinear and a DequantizeLinear (the method's trained grids; 8-bit MinMax grids calibrated on
training images elsewhere), which ONNX Runtime fuses into QLinearConv / QLinearAdd on any machine. The
file is all a deployment needs: `onnxruntime.InferenceSession(path).run(None, {"input": x})`.

A graph is built for a kind of CPU (`TARGETS`). x86 CPUs without VNNI (AVX2 only) add each pair of
uint8 x int8 products in 16 bits and saturate with full-range int8 weights (`qdq.pairs_saturate`), so a
graph for them keeps weights within `qdq.weight_limit` (7-bit float layers, ONNX Runtime's
`reduce_range`): it runs correctly everywhere, a little less exactly. A graph built for VNNI (or ARM)
uses all 8 bits and loses accuracy on an AVX2-only CPU. The target is written into the file's metadata
(`deepshrink.int8_target`), beside the data set and normalisation the `.dsz` records.

Example::

    info = export_integer("model.dsz", "model.int8.onnx", calibration_images)   # target: this CPU
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .qdq import pairs_saturate, weight_limit
from .qdq_graph import build_integer_graph, integer_obstacle

# --target-cpu name -> whether its u8 x s8 pair sums saturate at int16 (None: read this CPU's flags)
TARGETS = {"this": None, "vnni": False, "no-vnni": True}
TARGET_WORDS = {False: "x86 with VNNI (AVX-512 VNNI or AVX-VNNI) or ARM: full 8-bit weights",
                True: "x86 without VNNI (AVX2): weights within +-64 so that 16-bit pair sums cannot saturate"}
VERIFY_IMAGES = 256


def export_integer(src, out_path, calibration: torch.Tensor, target: str = "this", verify: bool = True) -> dict:
    """Write the integer QDQ graph of the model in `src` (a `.dsz` path or a loaded model) to `out_path`.

    `calibration`: training images (N, C, H, W) for the 8-bit activation ranges; `target`: a key of
    `TARGETS`. The file appears whole or not at all. Returns {"path", "bytes", "target", "weight_limit",
    "calibration_images", "nodes"} and, when `verify`, "agreement": the share of (up to 256) calibration
    images whose top class ONNX Runtime on this CPU gives as the loaded model does, and "verified_images".
    """
    from ..packing.format import atomic_write, load, recorded_data

    if target not in TARGETS:
        raise UserError(f"unknown target CPU {target!r}; choose one of {', '.join(TARGETS)}")
    model = load(src).eval() if not isinstance(src, torch.nn.Module) else src.eval()
    recorded = recorded_data(src) if not isinstance(src, torch.nn.Module) else {}
    saturating = pairs_saturate() if TARGETS[target] is None else TARGETS[target]
    obstacle = integer_obstacle(model, saturating)
    if obstacle:
        raise UserError(f"no integer graph for this model: {obstacle}; `deepshrink export` without --integer "
                        "writes its weight-only graph")
    graph = build_integer_graph(model, calibration[:1], calibration, saturating=saturating)
    for key, value in {**recorded, "int8_target": TARGET_WORDS[saturating],
                       "int8_weight_limit": weight_limit(255, saturating)}.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = f"deepshrink.{key}", json.dumps(value)
    atomic_write(Path(out_path), graph.SerializeToString())  # no half-written file on failure
    info = {"path": str(out_path), "bytes": Path(out_path).stat().st_size, "target": TARGET_WORDS[saturating],
            "weight_limit": weight_limit(255, saturating), "calibration_images": len(calibration),
            "nodes": len(graph.graph.node)}
    if verify:
        info.update(_agreement(model, out_path, calibration[:VERIFY_IMAGES]))
    return info


def _agreement(model, path, images: torch.Tensor) -> dict:
    """The share of `images` whose top class ONNX Runtime gives from the file as `model` does."""
    from .ort_engine import OrtRunner, _onnxruntime

    if _onnxruntime() is None:
        raise UserError("verifying the export needs onnxruntime: pip install onnxruntime (or pass --no-verify)")
    got = OrtRunner(Path(path).read_bytes(), threads=1)(images).numpy()  # (N, classes)
    with torch.no_grad():
        want = model(images).numpy()
    return {"agreement": round(float(np.mean(got.argmax(1) == want.argmax(1))), 4),
            "verified_images": len(images)}
