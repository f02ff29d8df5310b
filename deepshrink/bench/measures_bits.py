"""The `bit_kernels` measure (issue 22): binary and ternary convolution on packed bits, side by side with
PyTorch fp32 and ONNX Runtime int8 (QLinearConv) on the same shapes, 1 thread, batch 1, the median of
interleaved rounds; and which kernel the bit engine runs for each binary layer of the row's own model.

Binary rows: `conv` takes packed bits and gives floats (the epilogue's multiply-add included);
`conv->bits` gives the next layer's packed bits, what consecutive binary layers exchange; `pack+conv`
starts from floats. ORT int8 takes and gives uint8 tensors. Each path's `conv` rows run the per-layer
word kernel (64 channels per int64 word, channels-last floats); where the engine runs a shape on pixel
lanes instead (`kernels.lane_bits`: avx512, at most 64 channels, stride 1), its `lanes` rows run that
kernel (`lane_conv`: one 16/32/64-bit lane per pixel). The targets are judged on the kernel the engine
runs for the shape. Every `conv` row's floats are checked against the float convolution of the signs
before anything is timed. The whole network on each bit engine is the `speed` measure's
(`deepshrink/bench/suites/resnet20-bits.yaml` runs both).
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .measures import MeasureContext, register_measure

# (channels, size) -> the network the shape comes from, for the row labels
SHAPE_NAMES = {(64, 8): "layer3", (16, 32): "layer1", (256, 14): "imagenet"}
# ((channels, size), baseline) -> minimum speed-up of the engine's kernel, from issue 22's table
TARGETS = {((64, 8), "torch-fp32"): 10.0, ((64, 8), "ort-int8"): 3.0, ((16, 32), "torch-fp32"): 5.0,
           ((16, 32), "ort-int8"): 1.5, ((256, 14), "torch-fp32"): 12.0, ((256, 14), "ort-int8"): 3.0}
AVX2_TARGET = 5.0  # the AVX2 path at layer3, against torch fp32
TERNARY_TARGETS = {"torch-fp32": 5.0, "ort-int8": 1.5}


def interleaved_median_us(candidates: dict, rounds: int, budget_s: float = 0.02) -> dict[str, float]:
    """Median microseconds per call of each candidate; every round times each candidate once, in turn."""
    calls = {}
    for name, fn in candidates.items():
        fn()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < budget_s:
            fn()
            n += 1
        calls[name] = max(n, 3)
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / calls[name] * 1e6)
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


def ort_qlinearconv(channels: int, size: int, gen: torch.Generator):
    """A one-node ONNX Runtime session: uint8 input, int8 per-channel weights, uint8 output, 1 thread."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = torch.randint(-127, 128, (channels, channels, 3, 3), generator=gen, dtype=torch.int8).numpy()
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_zp"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.full(channels, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(channels, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "y_zp"),
             numpy_helper.from_array(np.zeros(channels, np.int32), "bias")]
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp",
                                            "bias"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    shape = [1, channels, size, size]
    graph = helper.make_graph([node], "qconv", [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).numpy()}
    return lambda: session.run(None, feed)


def layer_candidates(channels: int, size: int, ternary: bool, gen: torch.Generator) -> dict:
    """Callables for one conv shape: torch fp32, ORT int8 and each available bit path."""
    from .. import kernels

    ext = kernels.native()
    x = torch.randn(1, channels, size, size, generator=gen)
    weight = torch.randn(channels, channels, 3, 3, generator=gen)
    out = {"torch-fp32": lambda: F.conv2d(x, weight, None, 1, 1), "ort-int8": ort_qlinearconv(channels, size, gen)}
    codes = torch.randint(-1 if ternary else 0, 2, (channels, channels, 3, 3), generator=gen, dtype=torch.int8)
    planes = kernels.pack_weights(codes, 1, ternary)
    shape = [channels, channels, 3, 3, 1, 1, 1, 1, 1, 1, 1]
    scale, shift = torch.rand(channels, generator=gen), torch.randn(channels, generator=gen)
    x_last = x.contiguous(memory_format=torch.channels_last)
    for path in kernels.supported_paths():
        bits = ext.pack_activations(x_last, 1, None, None, path)
        out[f"{path} conv"] = (lambda b=bits, p=path: ext.conv(b, *planes, shape, scale, shift, None, False, True,
                                                               0, None, None, p))
        out[f"{path} conv->bits"] = (lambda b=bits, p=path: ext.conv(b, *planes, shape, scale, shift, None, True,
                                                                     False, 1, None, None, p))
        out[f"{path} pack+conv"] = (lambda p=path: ext.conv(ext.pack_activations(x_last, 1, None, None, p), *planes,
                                                            shape, scale, shift, None, False, True, 0, None, None, p))
        lane = kernels.lane_bits(shape, ternary, path)
        if lane:  # the next layer (the same shape) reads the same lanes
            lanes, lane_weight = kernels.pack_lanes(x, lane), kernels.pack_lane_weights(codes, lane)
            out[f"{path} lanes conv"] = (lambda b=lanes, w=lane_weight, p=path: ext.lane_conv(
                b, w, shape, scale, shift, None, False, True, 0, None, None, p))
            out[f"{path} lanes conv->bits"] = (lambda b=lanes, w=lane_weight, p=path, n=lane: ext.lane_conv(
                b, w, shape, scale, shift, None, False, False, n, None, None, p))
            out[f"{path} lanes pack+conv"] = (lambda w=lane_weight, p=path, n=lane: ext.lane_conv(
                ext.pack_lanes(x, n, None, None), w, shape, scale, shift, None, False, True, 0, None, None, p))
    check_exact(channels, ternary, out, x, codes, scale, shift)
    return out


def check_exact(channels: int, ternary: bool, candidates: dict, x: torch.Tensor, codes: torch.Tensor,
                scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Every `conv` row's floats must be the float convolution of the +-1 tensors through the same epilogue."""
    from ..quant.primitives import binary_sign

    weight = codes.float() if ternary else 2.0 * codes.float() - 1.0
    expected = F.conv2d(binary_sign(x), weight, None, 1, 1) * scale[:, None, None] + shift[:, None, None]
    for name, fn in candidates.items():
        if name.endswith(" conv") and not torch.equal(fn()[0], expected):
            raise AssertionError(f"{name} ({channels} channels) differs from the float convolution of its signs")


def engine_kernel(times: dict[str, float], path: str) -> str:
    """The row of the kernel the engine runs for the shape on `path`: its pixel lanes where it has them."""
    return f"{path} lanes conv" if f"{path} lanes conv" in times else f"{path} conv"


def speedups(times: dict[str, float]) -> dict:
    base = {k: times[k] for k in ("torch-fp32", "ort-int8")}
    return {name: {f"vs {b}": round(base[b] / t, 2) for b in base} for name, t in times.items() if name not in base}


def shape_label(channels: int, size: int, ternary: bool = False) -> str:
    name = SHAPE_NAMES.get((channels, size))
    label = f"{name + ' ' if name else ''}{channels}->{channels} {size}x{size}"
    return f"ternary x binary {label}" if ternary else label


def layer_section(shapes: list, ternary_shapes: list, rounds: int) -> dict:
    """Per shape: median µs of every candidate, speed-ups, the kernel the engine runs; the targets met."""
    from .. import kernels

    gen = torch.Generator().manual_seed(0)
    result, met = {}, {}
    paths = kernels.supported_paths()
    for ternary, chosen in ((False, shapes), (True, ternary_shapes)):
        for channels, size in chosen:
            label = shape_label(channels, size, ternary)
            times = interleaved_median_us(layer_candidates(channels, size, ternary, gen), rounds)
            kernel = engine_kernel(times, paths[0])
            result[label] = {"median_us": times, "speedup": speedups(times), "engine_kernel": kernel}
            targets = TERNARY_TARGETS.items() if ternary else \
                [(b, t) for (shape, b), t in TARGETS.items() if shape == (channels, size)]
            for baseline, target in targets:
                got = round(times[baseline] / times[kernel], 2)
                met[f"{label}, {kernel} vs {baseline} >= {target}x"] = {"speedup": got, "met": got >= target}
            if not ternary and (channels, size) == (64, 8) and "avx2" in paths:
                kernel = engine_kernel(times, "avx2")
                got = round(times["torch-fp32"] / times[kernel], 2)
                met[f"{label}, {kernel} vs torch-fp32 >= {AVX2_TARGET}x"] = {"speedup": got, "met": got >= AVX2_TARGET}
    return {"layers": result, "targets": met}


def dispatch_costs(rounds: int) -> dict:
    """Microseconds per call that do (almost) no work: what each op costs before its arithmetic."""
    from .. import kernels

    ext, path = kernels.native(), kernels.supported_paths()[0]
    tiny = torch.randn(1, 1, 1, 1)
    bits = ext.pack_activations(tiny, 1, None, None, path)
    planes = kernels.pack_weights(torch.ones(1, 1, 1, 1, dtype=torch.int8))
    one, zero, shape = torch.ones(1), torch.zeros(1), [1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1]
    return interleaved_median_us({
        "torch.relu on 1 value": lambda: torch.relu(tiny),
        "native conv on 1 channel, 1 pixel": lambda: ext.conv(bits, *planes, shape, one, zero, None, False, True, 0,
                                                              None, None, path),
        "native pack of 1 value": lambda: ext.pack_activations(tiny, 1, None, None, path),
    }, rounds)


def row_kernels(model, example: torch.Tensor) -> dict:
    """How the best bit engine runs the row's model: its native plan's ops in order (one native call per
    batch), or, where no plan compiles, the graph's native layers and calls; or why it cannot run it."""
    from .. import kernels
    from ..runtime import get_engine

    engine = get_engine(f"bits-{kernels.supported_paths()[0]}")
    reason = engine.unavailable_reason() or engine.unsupported_reason(model)
    if reason:
        return {"engine": engine.name, "refused": reason}
    runner = engine.prepare(model, example, threads=1)
    if runner.plan is not None:
        return {"engine": engine.name, "graph_calls": 1,
                "plan_ops": [name for name, _ in runner.plan.native.op_seconds()]}
    return {"engine": engine.name,
            "native_layers": sum(type(m).__name__ == "BitConv2d" for m in runner.module.modules()),
            "graph_calls": sum(n.op in ("call_module", "call_function", "call_method") for n in runner.module.graph.nodes)}


def _check(settings: dict, where: str) -> None:
    for key in ("shapes", "ternary_shapes"):
        value = settings[key]
        if not all(isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 and v > 0 for v in s) for s in value):
            raise UserError(f"{where}.{key} must be a list of [channels, size] pairs of positive integers, got "
                            f"{value!r}")


def _targets_cell(record: dict) -> str:
    targets = (record.get("bit_kernels") or {}).get("targets") or {}
    return f"{sum(t['met'] for t in targets.values())}/{len(targets)}" if targets else "—"


@register_measure("bit_kernels", figures={"bit_kernels": ("bit-kernel targets met", _targets_cell)},
                  settings={"rounds": 21, "shapes": [[64, 8], [16, 32], [256, 14]], "ternary_shapes": [[64, 8]]},
                  check=_check)
def bit_kernels(ctx: MeasureContext) -> dict:
    """Binary and ternary 3x3 convolutions on packed bits on every available code path, beside PyTorch fp32
    and ONNX Runtime int8 QLinearConv of the same shapes (batch 1, 1 thread, median µs of interleaved
    rounds), judged against issue 22's targets on the kernel the engine runs for each shape; and which
    kernel the best bit engine runs for each layer of the row's model.

    The shapes are settings, not the row's: the row adds its own network's plan (`bit_kernels.row`)
    and the native calls' dispatch cost at batch 1. Nothing is timed where the kernels do not build."""
    from .. import kernels

    if kernels.native() is None:
        return {"bit_kernels": {"unavailable": kernels.unavailable_reason()}}
    settings = ctx.settings
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        section = layer_section(settings["shapes"], settings["ternary_shapes"], settings["rounds"])
        section["dispatch_us"] = dispatch_costs(settings["rounds"])
    finally:
        torch.set_num_threads(threads)
    batch = next(iter(ctx.eval_batches()))
    example = (batch[0] if isinstance(batch, (tuple, list)) else batch)[:1]
    from .measures_runtime import machine

    section.update(paths=kernels.supported_paths(), rounds=settings["rounds"], batch=1, threads=1,
                   row=row_kernels(ctx.model.eval(), example), **machine())
    return {"bit_kernels": section}
