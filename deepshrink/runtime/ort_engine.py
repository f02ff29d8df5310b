"""ONNX Runtime engines (CPU execution provider, all graph optimisations):

- `onnxruntime-fp32` (reference): the uncompressed network (`float_reference`) exported to ONNX.
- `onnxruntime-int8-ptq` (reference): ONNX Runtime's own static quantization of that float network
  (`quantize_static`: QDQ, per-channel int8 weights, uint8 activations, MinMax ranges over the
  calibration images) - what a user gets in two calls, the baseline the integer engine must match. On
  an x86 CPU without VNNI it passes `reduce_range=True` (7-bit weights), as ONNX Runtime's documentation
  advises there: its u8s8 kernels add pairs in 16 bits and saturate with full-range int8 weights.
- `onnxruntime-int8`: the integer engine for the compressed model itself (deepshrink/runtime/qdq_graph.py):
  its codes pass through as int8, its activations sit on the grids it trained with, other activations
  are 8-bit with MinMax ranges over the calibration images; ONNX Runtime fuses the QDQ graph into
  QLinearConv / QLinearAdd (MLAS u8s8 kernels; VNNI where the CPU has it).

Why ONNX Runtime rather than PyTorch's x86 quantized engine: measured side by side in
benchmarks/results/speed_resnet20.json (row `torch-x86-int8-ptq`: FX graph-mode static PTQ of the
same float network; `torch_engine.TorchX86Int8PTQ`, a reference of the suite resnet20-speed). At batch 1 PyTorch pays its per-op dispatch on every quantized op and is several
times slower; at batch 64 the two are within ~10%. ONNX Runtime also takes the codes as they are
(int8 initialisers behind DequantizeLinear), where PyTorch's flow derives weights from its observers. Sessions run one inference at a time (sequential execution, one inter-op
thread) on `threads` intra-op threads that do not spin between calls, so that engines measured in
turn in one process do not steal each other's cores.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from .engines import Engine, Runner, register_engine
from .qdq import pairs_saturate
from .qdq_graph import build_integer_graph, export_float, integer_obstacle
from .torch_engine import float_reference

CALIBRATION_IMAGES = 512  # what the anchor used for ONNX Runtime's PTQ


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def session_options(threads: int, optimized_path: str | None = None):
    """ONNX Runtime session options: `threads` intra-op threads, no spinning, all optimisations."""
    onnxruntime = _onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
    return options


class OrtRunner(Runner):
    """An ONNX Runtime session over a serialised graph; `resident_bytes` is the graph's size (its weights)."""

    def __init__(self, graph: bytes, threads: int, optimized_path: str | None = None):
        self.graph_bytes = len(graph)
        self.session = _onnxruntime().InferenceSession(graph, session_options(threads, optimized_path),
                                                       providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def resident_bytes(self) -> int:
        return self.graph_bytes


class _OrtEngine(Engine):
    def unavailable_reason(self):
        return None if _onnxruntime() else "onnxruntime is not installed (pip install onnxruntime)"


class _GraphCache:
    """The last few graphs an engine built, per (model, calibration) pair: `deepshrink speed` prepares
    each engine once per batch size and thread count, and the graph depends on neither."""

    def __init__(self, size: int = 4):
        self.size, self.entries = size, []  # [(model, calibration, graph)], newest last

    def get(self, model, calibration, build) -> bytes:
        for entry in self.entries:
            if entry[0] is model and entry[1] is calibration:
                return entry[2]
        self.entries = self.entries[-(self.size - 1):] + [(model, calibration, build())]
        return self.entries[-1][2]


_FLOAT_GRAPHS = _GraphCache()


def float_graph(model, example: torch.Tensor) -> bytes:
    """The uncompressed network as an fp32 ONNX graph, exported once per model for both engines that read it."""
    return _FLOAT_GRAPHS.get(model, None, lambda: export_float(float_reference(model), example[:1]))


@register_engine
class OrtFloat(_OrtEngine):
    """The uncompressed network in ONNX Runtime at fp32."""

    name = "onnxruntime-fp32"
    reference = True

    def prepare(self, model, example, threads=1, calibration=None):
        return OrtRunner(float_graph(model, example), threads)


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a tensor of images."""

    def __init__(self, images: torch.Tensor, batch_size: int = 64):
        self.batches = iter([{"input": images[i:i + batch_size].numpy().astype(np.float32)}
                             for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def ptq_graph(float_graph: bytes, images: torch.Tensor, reduce_range: bool | None = None) -> bytes:
    """`onnxruntime.quantization.quantize_static` of a float graph: QDQ, per-channel int8 weights (7-bit
    with `reduce_range`, by default where this CPU's pairs saturate), uint8 activations, MinMax ranges
    over `images`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(float_graph)
        quantize_static(str(source), str(target), _Reader(images), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=pairs_saturate() if reduce_range is None else reduce_range)
        return target.read_bytes()


@register_engine
class OrtPTQ(_OrtEngine):
    """ONNX Runtime's own int8 static quantization of the uncompressed network (the user's two-call baseline)."""

    name = "onnxruntime-int8-ptq"
    reference = True
    _cache = _GraphCache()

    def prepare(self, model, example, threads=1, calibration=None):
        images = (example if calibration is None else calibration)[:CALIBRATION_IMAGES]
        graph = self._cache.get(model, calibration, lambda: ptq_graph(float_graph(model, example), images))
        return OrtRunner(graph, threads)


@register_engine
class OrtInteger(_OrtEngine):
    """The compressed model's own integer codes and activation grids, fused by ONNX Runtime (module docstring)."""

    name = "onnxruntime-int8"

    def unsupported_reason(self, model):
        return integer_obstacle(model)

    _cache = _GraphCache()

    def prepare(self, model, example, threads=1, calibration=None, optimized_path=None):
        """As Engine.prepare; `optimized_path`: where ONNX Runtime writes the graph it runs (fused ops)."""
        images = (example if calibration is None else calibration)[:CALIBRATION_IMAGES]
        graph = self._cache.get(model, calibration, lambda: build_integer_graph(
            model, example[:1], images).SerializeToString())
        return OrtRunner(graph, threads, optimized_path)
