"""How closely the integer engine (`onnxruntime-int8`) can agree with its file, measured against how
closely the file agrees with itself under perturbations far below one activation step.

For each packed model, on the full test split: top-1 from the file (the loaded model in PyTorch), top-1
on the integer engine, the share of images whose predicted class differs, and the same for `--seeds`
copies of the file whose every trained activation quantizer sees its input plus Gaussian noise of
`--noise` times its grid step (`deepshrink.runtime.qdq.quantizer_noise`; otherwise the file, bit for bit). A
quantizer rounds to the nearest step, so noise of 1% of a step moves about 1% of the codes that sit
within a step's hundredth of a rounding boundary: the smallest change any other arithmetic (an int32
bias, an 8-bit residual stream, a different summation order) makes.

Why: a W4A4 ResNet-20 re-rounds its activations to 16 levels 19 times, so a code flipped by a tiny
error early on flips others downstream. If the perturbed copies of the file land, on average, where the
engine lands, the engine's distance from the file is the file's own instability, not an engine error,
and the right yardstick for the engine is the perturbed file's top-1 (mean and standard deviation
over seeds), not the one unperturbed realisation.

    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/engine_agreement.py \\
        --model dorefa-w4a4=runs/speed/dorefa-w4a4/model.dsz --data-root ~/.cache/deepshrink/cifar10-jpeg \\
        --out benchmarks/results/engine_agreement.json

An existing `--out` file keeps its other models' entries, so each model can run on its own.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import deepshrink
from deepshrink.runtime import get_engine
from deepshrink.runtime.measure import speed_data
from deepshrink.runtime.qdq import quantizer_noise


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def logits_of(run, images: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """`run` over `images` (N, C, H, W), `chunk` at a time, as one (N, classes) tensor."""
    with torch.no_grad():
        return torch.cat([run(images[start:start + chunk]) for start in range(0, len(images), chunk)])


def compare(got: torch.Tensor, want: torch.Tensor, labels: torch.Tensor) -> dict:
    """top-1 (%) of `got`, its difference from `want`'s and the share (%) of differing predictions."""
    top1 = 100.0 * float((got.argmax(1) == labels).float().mean())
    file_top1 = 100.0 * float((want.argmax(1) == labels).float().mean())
    return {"top1": round(top1, 2), "delta": round(top1 - file_top1, 2),
            "disagree_pct": round(100.0 * float((got.argmax(1) != want.argmax(1)).float().mean()), 2)}


def one_model(path: str, calibration, images, labels, noise: float, seeds: int) -> dict:
    model = deepshrink.load(path).eval()
    want = logits_of(model, images)
    runner = get_engine("onnxruntime-int8").prepare(model, calibration[:1], threads=1, calibration=calibration)
    engine = compare(logits_of(runner, images), want, labels)
    copies = []
    for seed in range(seeds):
        with quantizer_noise(model, noise, seed):
            copies.append(compare(logits_of(model, images), want, labels))
        log(f"{path}: perturbed copy {seed}: {copies[-1]}")
    deltas = np.array([c["delta"] for c in copies])
    return {"path": path, "top1_file": round(100.0 * float((want.argmax(1) == labels).float().mean()), 2),
            "engine": engine, "perturbed": copies,
            "perturbed_delta_mean": round(float(deltas.mean()), 3),
            "perturbed_delta_sd": round(float(deltas.std(ddof=1)), 3) if seeds > 1 else None,
            "engine_minus_perturbed_mean": round(engine["delta"] - float(deltas.mean()), 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a packed model")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--noise", type=float, default=0.01, help="noise sd, in grid steps")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    calibration, test_batches, _ = speed_data(args.data, args.data_root, args.calibration)
    images, labels = (torch.cat(parts) for parts in zip(*test_batches()))
    out = Path(args.out)
    models = json.loads(out.read_text())["models"] if out.exists() else {}  # one model per run fits a time slot
    for spec in args.model:
        name, _, path = spec.partition("=")
        models[name] = one_model(path, calibration, images, labels, args.noise, args.seeds)
        models[name]["command"] = " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])
        models[name].update(data=args.data, test_images=len(labels), calibration_images=len(calibration),
                            noise_steps=args.noise, seeds=args.seeds)
        summary = {k: v for k, v in models[name].items() if k not in ("perturbed", "command")}
        log(f"{name}: {json.dumps(summary)}")
        out.write_text(json.dumps({"models": models}, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
