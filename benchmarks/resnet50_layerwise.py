"""ResNet-50 at 224x224 through the layer-wise methods on this CPU: wall time, per-layer seconds, peak memory.

No ImageNet exists on these machines and no trained ResNet-50 either: the network has random weights
(seeded) and the 1,024 calibration images (the "And the bit goes down" default n_activations) come from
the generated ImageNet-like folder of benchmarks/imagefolder_scale.py (1,000 classes of 160x120 JPEGs,
resized to 256 and centre-cropped to 224 as for evaluation). So these rows measure time and memory only:
top-1 on random weights would mean nothing, and none is reported.

Each method runs in a fresh process (its peak resident memory, `ru_maxrss`, is the process's own):
- `ldnq`: L-DNQ 3 levels (Xu et al. 2019), the shipped defaults;
- `lobs`: L-OBS 50% (Dong et al. 2017), the paper's one-shot mode; the exact (OBC) mode's solves are
  estimated by `--obs-exact-estimate`: a few rows of three row lengths (1,152, 2,304, 4,608) are timed
  and scaled over every layer of ResNet-50 (a row of length D losing D/2 weights costs ~D^3);
- `pq`: PQ at the paper's small-block setting (Stock et al. 2020): 256 centroids, block 9 for 3x3 and 4
  for 1x1 convolutions, and the fc layer compressed too, 2,048 centroids of 4 (keep_first_last off for
  the fc only; the 7x7 stem stays float).
`--no-cache` turns off the block-input cache (layerwise/stream.py) to show what it saves.

    python benchmarks/resnet50_layerwise.py --root /tmp/inet100k --methods ldnq,lobs,pq \\
        --out benchmarks/results/resnet50_layerwise.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = {
    "ldnq": {"method": "ldnq", "params": {"levels": 3}},
    "lobs": {"method": "lobs", "params": {"sparsity": 0.5, "mode": "one_shot"}},
    "lobs-exact": {"method": "lobs", "params": {"sparsity": 0.5, "mode": "exact"}},
    "pq": {"method": "pq", "params": {"n_centroids": 256, "block_conv3x3": 9, "block_conv1x1": 4, "block_linear": 4},
           "keep_first_last": False,
           "layers": [{"pattern": "conv1", "skip": True}, {"pattern": "fc", "params": {"n_centroids": 2048}}]},
}


def calibration(root: Path, images: int, batch_size: int):
    """The first `images` images of a stratified subset (every class), evaluation transform, in batches."""
    from deepshrink.data import get_dataset, make_loader, subset
    dataset = get_dataset("imagefolder", "train", root=root)
    chosen = subset(dataset, per_class=-(-images // len(dataset.classes)), seed=0)
    batches, count = [], 0
    for inputs, labels in make_loader(chosen, batch_size, train=False, num_workers=2):
        batches.append((inputs[:images - count], labels[:images - count]))
        count += len(batches[-1][0])
        if count >= images:
            return batches
    raise SystemExit(f"the folder holds fewer than {images} images")


def run_one(args) -> dict:
    """One method in this process: compress, pack, report (printed as one JSON line)."""
    import torch

    import deepshrink
    from deepshrink.registry import create_model
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    calib = calibration(args.root, args.images, args.batch_size)
    load_s = time.perf_counter() - start
    model = create_model("resnet50", num_classes=1000).eval()
    recipe = json.loads(json.dumps(RECIPES[args.one]))
    recipe["params"]["cache_inputs"] = not args.no_cache
    start = time.perf_counter()
    result = deepshrink.compress(model, recipe, calib_data=calib, inplace=True)
    compress_s = time.perf_counter() - start
    report = getattr(result.model, "deepshrink_report", None) or result.metrics.get("report", {})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.dsz"
        deepshrink.pack(result.model, path)
        size = path.stat().st_size
    layers = report.get("layers", {})
    slowest = sorted(layers.items(), key=lambda item: -item[1]["seconds"])[:5]
    return {"method": args.one, "recipe": RECIPES[args.one], "cache_inputs": not args.no_cache,
            "threads": args.threads, "calibration_images": args.images, "load_calibration_s": round(load_s, 1),
            "compress_s": round(compress_s, 1), "solve_and_capture_s": round(report.get("seconds", float("nan")), 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "packed_bytes": size, "layers": len(layers), "input_cache_fallbacks": report.get("input_cache_fallbacks"),
            "per_layer_s": {name: round(info["seconds"], 2) for name, info in layers.items()},
            "slowest_layers": [[name, round(info["seconds"], 1)] for name, info in slowest]}


def obs_exact_estimate(threads: int) -> dict:
    """Seconds per row of `obs_exact` at three row lengths (random H), scaled to ResNet-50's layers."""
    import torch

    from deepshrink.layerwise import hessian as hess
    from deepshrink.layerwise.lobs import obs_exact
    from deepshrink.registry import create_model
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    per_row = {}
    for dim, rows in [(1152, 8), (2304, 4), (4608, 2)]:
        x = torch.randn(3 * dim, dim, dtype=torch.float64)
        hinv = hess.inverse((x.T @ x / x.shape[0]).unsqueeze(0), 0.01)[0]  # (D, D)
        start = time.perf_counter()
        obs_exact(torch.randn(rows, dim, dtype=torch.float64), hinv, torch.full((rows,), dim // 2))
        per_row[dim] = (time.perf_counter() - start) / rows
    total = 0.0
    for name, module in create_model("resnet50", num_classes=1000).named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and name not in ("conv1", "fc"):
            dim = module.weight[0].numel()
            nearest = min(per_row, key=lambda d: abs(d - dim))
            total += module.weight.shape[0] * per_row[nearest] * (dim / nearest) ** 3
    return {"threads": threads, "seconds_per_row": {str(d): round(t, 3) for d, t in per_row.items()},
            "estimated_solve_hours": round(total / 3600, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the generated folder (imagefolder_scale.py)")
    parser.add_argument("--methods", default="ldnq,lobs,pq")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--out", type=Path, help="results JSON (rows merged by method and cache setting)")
    parser.add_argument("--obs-exact-estimate", action="store_true", help="time L-OBS exact rows, scale up")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    saved = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    rows = saved.get("rows", [])
    if args.obs_exact_estimate:
        saved["lobs_exact_estimate"] = obs_exact_estimate(args.threads)
        saved["lobs_exact_estimate"]["command"] = "python benchmarks/" + Path(__file__).name + " " + \
            shlex.join(sys.argv[1:])
        print(json.dumps(saved["lobs_exact_estimate"]))
        args.methods = ""
    for method in filter(None, args.methods.split(",")):
        command = [sys.executable, __file__, "--one", method, "--root", str(args.root), "--images", str(args.images),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)] + \
            (["--no-cache"] if args.no_cache else [])
        print(f"[resnet50] {method} ...", flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # progress goes to stderr as it runs
        if done.returncode:
            return done.returncode
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["command"] = "python benchmarks/" + Path(__file__).name + " " + shlex.join(sys.argv[1:])
        print(json.dumps({k: v for k, v in row.items() if k != "per_layer_s"}), flush=True)
        rows = [r for r in rows if (r["method"], r["cache_inputs"]) != (method, row["cache_inputs"])] + [row]
        if args.out:
            _write(args.out, saved, rows)
    if args.out and args.obs_exact_estimate:
        _write(args.out, saved, rows)
    return 0


def _write(path: Path, saved: dict, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    saved.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", rows=rows)
    path.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
