"""Bit-kernel benchmark (issue 22): binary and ternary convolution on packed bits, side by side with
PyTorch fp32 and ONNX Runtime int8 (QLinearConv) on the same shapes, 1 thread, batch 1, the median of
interleaved rounds; then a whole XNOR-Net ResNet-20 (the xnor-kd recipe's structure) on the bit
engines beside PyTorch eager fp32, with the per-call dispatch costs that bound it at batch 1.

Binary rows: `conv` takes packed bits and gives floats (the epilogue's multiply-add included);
`conv->bits` gives the next layer's packed bits, what consecutive binary layers exchange;
`pack+conv` starts from floats. ORT int8 takes and gives uint8 tensors. Each path's `conv` rows run the
per-layer word kernel (64 channels per int64 word, channels-last floats); where the engine runs a shape
on pixel lanes instead (`kernels.lane_bits`: avx512, at most 64 channels, stride 1), its `lanes` rows run
that kernel (`lane_conv`: one 16/32/64-bit lane per pixel, (N, C, H, W) floats, the next layer's lanes).
The targets are judged on the kernel the engine runs for the shape.

    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/bits_kernels.py \\
        --base ../shared/models/resnet20-cifar10jpeg.pt --out benchmarks/results/bits_kernels.json

With --data-root, the network's top-1 on the CIFAR-10 test set is compared between the loaded file
and each bit engine (the weights are xnor-kd's structure at 0 epochs: the check is that the engine
agrees with the file, not the accuracy itself).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import deepshrink
from deepshrink import kernels
from deepshrink.runtime import get_engine

SHAPES = [("layer3 64->64 8x8", 64, 8), ("layer1 16->16 32x32", 16, 32), ("imagenet 256->256 14x14", 256, 14)]
# (shape, baseline) -> minimum speed-up, from issue 22's table
TARGETS = {("layer3 64->64 8x8", "torch-fp32"): 10.0, ("layer3 64->64 8x8", "ort-int8"): 3.0,
           ("layer1 16->16 32x32", "torch-fp32"): 5.0, ("layer1 16->16 32x32", "ort-int8"): 1.5,
           ("imagenet 256->256 14x14", "torch-fp32"): 12.0, ("imagenet 256->256 14x14", "ort-int8"): 3.0}
AVX2_TARGET = 5.0  # the AVX2 path at layer3, against torch fp32
TERNARY_TARGETS = {"torch-fp32": 5.0, "ort-int8": 1.5}


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


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
    import onnx
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
    graph = helper.make_graph([node], "qconv", [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                              [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, channels, size, size])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": torch.randint(0, 256, (1, channels, size, size), generator=gen, dtype=torch.uint8).numpy()}
    return lambda: session.run(None, feed)


def layer_candidates(channels: int, size: int, ternary: bool, gen: torch.Generator) -> dict:
    """Callables for one conv shape: torch fp32, ORT int8 and each available bit path."""
    ext = kernels.native()
    x = torch.randn(1, channels, size, size, generator=gen)
    weight = torch.randn(channels, channels, 3, 3, generator=gen)
    out = {"torch-fp32": lambda: F.conv2d(x, weight, None, 1, 1), "ort-int8": ort_qlinearconv(channels, size, gen)}
    low = -1 if ternary else 0
    codes = torch.randint(low, 2, (channels, channels, 3, 3), generator=gen, dtype=torch.int8)
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
    from deepshrink.quant.primitives import binary_sign

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


def layer_section(rounds: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    result, met = {}, {}
    best = kernels.supported_paths()[0]
    for label, channels, size in SHAPES:
        log(f"layer {label}")
        times = interleaved_median_us(layer_candidates(channels, size, False, gen), rounds)
        result[label] = {"median_us": times, "speedup": speedups(times)}
        kernel = engine_kernel(times, best)
        for (shape, baseline), target in TARGETS.items():
            if shape == label:
                got = round(times[baseline] / times[kernel], 2)
                met[f"{label}, {kernel} vs {baseline} >= {target}x"] = {"speedup": got, "met": got >= target}
        if label.startswith("layer3") and "avx2" in kernels.supported_paths():
            kernel = engine_kernel(times, "avx2")
            got = round(times["torch-fp32"] / times[kernel], 2)
            met[f"{label}, {kernel} vs torch-fp32 >= {AVX2_TARGET}x"] = {"speedup": got, "met": got >= AVX2_TARGET}
    log("ternary x binary, layer3")
    times = interleaved_median_us(layer_candidates(64, 8, True, gen), rounds)
    result["ternary x binary layer3 64->64 8x8"] = {"median_us": times, "speedup": speedups(times)}
    kernel = engine_kernel(times, best)
    for baseline, target in TERNARY_TARGETS.items():
        got = round(times[baseline] / times[kernel], 2)
        met[f"ternary layer3, {kernel} vs {baseline} >= {target}x"] = {"speedup": got, "met": got >= target}
    return {"layers": result, "targets": met}


def xnor_network(base_path: str, folder: Path):
    """The shared float ResNet-20 and its xnor-kd structure (0 epochs), packed to `folder` and loaded."""
    base = deepshrink.create_model("resnet20", shortcut="B")
    base.load_state_dict(torch.load(base_path, map_location="cpu", weights_only=True))
    base.eval()
    data = [(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))]
    import copy

    result = deepshrink.compress(copy.deepcopy(base), "xnor-kd", train_data=data, overrides=["train.epochs=0"])
    path = folder / "xnor-kd-0epochs.dsz"
    deepshrink.pack(result.model, path)
    return base, deepshrink.load(path).eval(), path


def dispatch_costs(rounds: int) -> dict:
    """Microseconds per call that do (almost) no work: what each op costs before its arithmetic."""
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


def network_section(base_path: str, rounds: int, data_root: str | None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        base, loaded, path = xnor_network(base_path, Path(folder))
        file_bytes = path.stat().st_size
    paths = kernels.supported_paths()
    runners = {f"bits-{p}": get_engine(f"bits-{p}").prepare(loaded, torch.randn(1, 3, 32, 32), threads=1)
               for p in paths}
    first = next(iter(runners.values()))
    section = {"file_bytes": file_bytes,
               "resident_bytes": {name: r.resident_bytes() for name, r in runners.items()}}
    if first.plan is not None:  # the whole network is one native call; its ops run in C++
        section.update({"graph_calls": 1, "plan_ops": [name for name, _ in first.plan.native.op_seconds()]})
    else:
        section.update({"native_layers": sum(type(m).__name__ == "BitConv2d" for m in first.module.modules()),
                        "graph_calls": sum(n.op in ("call_module", "call_function", "call_method")
                                           for n in first.module.graph.nodes)})
    for batch in (1, 64):
        log(f"network batch {batch}")
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))

        def eager(model, x=x):
            with torch.inference_mode():
                return model(x)

        candidates = {"torch-fp32 (float ResNet-20)": lambda: eager(base),
                      "torch eager (the xnor file, float path)": lambda: eager(loaded)}
        candidates.update({name: (lambda r=r: r(x)) for name, r in runners.items()})
        times = interleaved_median_us(candidates, rounds if batch == 1 else max(5, rounds // 4), budget_s=0.05)
        section[f"batch {batch} median_ms"] = {k: round(v / 1000, 4) for k, v in times.items()}
    section["dispatch_us"] = dispatch_costs(rounds)
    if data_root:
        section["top1"] = network_top1(loaded, runners, data_root)
    return section


def network_top1(loaded, runners: dict, data_root: str) -> dict:
    from deepshrink.data import get_dataset, make_loader
    from deepshrink.runtime.measure import top1

    test = get_dataset("cifar10", "test", root=data_root)
    batches = list(make_loader(test, 500, train=False))
    log("top-1 of the file (torch eager) and of each bit engine")
    out = {"file (torch eager)": top1(lambda x: loaded(x), batches, 500)}
    out.update({name: top1(r, batches, 500) for name, r in runners.items()})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the float ResNet-20 checkpoint (enables the network section)")
    parser.add_argument("--data-root", help="CIFAR-10 root: compare the network's top-1, file vs engines")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--out", default="benchmarks/results/bits_kernels.json")
    args = parser.parse_args(argv)
    if kernels.native() is None:
        print(f"bits_kernels: {kernels.unavailable_reason()}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    import onnxruntime

    result = {"command": "flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/bits_kernels.py "
                         + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
              "threads": 1, "batch": 1, "rounds": args.rounds, "paths": kernels.supported_paths(),
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "cpu": _cpu(),
              # what else the machine ran: timings taken beside a busy core read slower than on an idle one
              "cpus_allowed": sorted(os.sched_getaffinity(0)), "load_average_at_start": os.getloadavg()}
    result.update(layer_section(args.rounds))
    if args.base:
        result["network"] = network_section(args.base, args.rounds, args.data_root)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.out}")
    print(json.dumps(result["targets"], indent=1))
    return 0


def _cpu() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


if __name__ == "__main__":
    sys.exit(main())
