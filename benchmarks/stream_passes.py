"""How many forward passes of the calibration set a layer-wise method's input reads cost, with and without
paused block runs (deepshrink/layerwise/block_runs.py), counted in conv multiply-adds, not timed.

Two walks per model, as the layer-wise driver makes them: every Conv2d's inputs in execution order (the
Hessians) and every BatchNorm's (the BatchNorm correction; it also runs the original network once, not
counted here). "hooks" reads each layer by running its block from the cached block input up to a hook on
the layer (every block treated as one torch.fx cannot trace); "runs" is the default. The counts depend on
the structure and the batch size only, so small random images stand in for 224x224 ones.

    python benchmarks/stream_passes.py --out benchmarks/results/stream_passes.json
"""
from __future__ import annotations

import argparse
import json
from unittest import mock

import torch
from torch import nn

from deepshrink import create_model
from deepshrink.layerwise import stream
from deepshrink.layerwise.capture import execution_order


def passes(model: nn.Module, batches: list[torch.Tensor], kind: type, runs: bool) -> float:
    """Conv multiply-adds of reading every `kind` module's inputs, in forward passes of `batches`."""
    macs = [0]

    def count(conv, args, output):
        macs[0] += output.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for batch in batches:
            model(batch)
    forward, macs[0] = macs[0], 0
    names = [n for n, m in model.named_modules() if isinstance(m, kind)]
    with mock.patch.object(stream, "_traced", stream._traced if runs else (lambda block: None)):
        reader = stream.LayerInputs(model, batches, range(len(batches)))
        for name in execution_order(model, names, batches[0]):
            for _ in reader.inputs(name):
                pass
    for handle in handles:
        handle.remove()
    return macs[0] / forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=16, help="calibration batches (1,024 images / 64)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in ("resnet18", "resnet50"):
        model = create_model(name, num_classes=1000).eval()
        batches = [torch.randn(64, 3, 32, 32) for _ in range(args.batches)]  # (B, C, H, W): 64 as in the suites
        for kind in (nn.Conv2d, nn.BatchNorm2d):
            row = {"model": name, "reads": kind.__name__, "batches": args.batches,
                   "hooks": round(passes(model, batches, kind, runs=False), 2),
                   "runs": round(passes(model, batches, kind, runs=True), 2)}
            print(row, flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python benchmarks/stream_passes.py --out " + args.out, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
