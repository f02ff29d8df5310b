"""Packed sizes of the shared CIFAR-10 ResNet-20 under each method, and accuracy from the file.

For each row: `deepshrink.pipeline.run_compress` compresses the shared checkpoint (option-B ResNet-20,
86.58% top-1), packs it to `model.dsz`, reloads it and evaluates the reloaded model on the 10,000 test
images; the in-memory model's top-1 (before packing) is recorded beside it. The file is then
re-packed with the entropy stage (and base-3 ternary codes) to report that size and the Shannon bound,
and once more with float tensors (BN statistics, first conv, last fc) in fp16 (evaluated with --eval-fp16).

QAT rows (BWN, TTQ, DoReFa 2/2) train for only `--qat-steps` steps: the packed size does not depend on
accuracy (the codes have the same width whatever they hold), so the accuracy columns of those rows say
nothing about the methods, only that the file reproduces the model exactly.

    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/pack_sizes.py \
        --data-root ~/.cache/deepshrink/cifar10-jpeg --qat-steps 20

Writes one JSON line per row to benchmarks/results/pack_sizes.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import deepshrink
from deepshrink.api import evaluate
from deepshrink.packing import inspect, load, save
from deepshrink.pipeline import build_data, build_model, run_compress
from deepshrink.spec import run_spec

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO.parent / "shared" / "models" / "resnet20-cifar10jpeg.pt"


def rows(qat_steps: int) -> list[tuple[str, object, list[str]]]:
    """(row name, recipe, overrides)."""
    qat = ["train.epochs=1", f"train.max_steps_per_epoch={qat_steps}", "train.lr=0.001"]
    table = [
        ("bwn", "bwn", qat),
        ("ttq", "ttq", qat),
        ("dorefa-w2a2", "dorefa-w2a2", qat),
        ("ldnq-l3", "ldnq-l3", []),  # built-in layer-wise recipes (deepshrink/recipes/*.yaml)
        ("lobs70-ldnq-l5", "lobs70-ldnq-l5", []),
        ("pq", "pq-resnet20", []),
    ]
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(Path.home() / ".cache" / "deepshrink" / "cifar10-jpeg"))
    parser.add_argument("--qat-steps", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    parser.add_argument("--test-per-class", type=int, default=None,
                        help="evaluate on this many test images per class (default: all 10,000)")
    parser.add_argument("--eval-fp16", action="store_true", help="also evaluate the fp16 file (one more test pass)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pack_sizes.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 2 threads are much slower on the shared 2-core machine
    fp32 = build_model("resnet20", ["shortcut=B"], str(CHECKPOINT), num_classes=10, in_channels=3)
    fp32_state_bytes = sum(t.numel() * 4 for t in fp32.state_dict().values() if t.is_floating_point())
    fp32_param_bytes = 4 * sum(p.numel() for p in fp32.parameters())
    bundle = build_data("cifar10", args.data_root, batch_size=128, eval_batch_size=500)
    if args.test_per_class:  # a stratified slice of the test set, when CPU time is short
        from deepshrink.data import get_dataset, make_loader, subset

        test_set = subset(get_dataset("cifar10", "test", root=args.data_root), per_class=args.test_per_class)
        bundle.val = make_loader(test_set, 500, train=False)
    with tempfile.TemporaryDirectory() as tmp:
        save(fp32.eval(), Path(tmp) / "fp32.dsz")
        fp32_file = (Path(tmp) / "fp32.dsz").stat().st_size
        for name, recipe, overrides in rows(args.qat_steps):
            if args.only and name not in args.only:
                continue
            out_dir = Path(tmp) / name
            spec = run_spec(recipe, model="resnet20", model_args=["shortcut=B"], base=str(CHECKPOINT),
                            data="cifar10", data_root=args.data_root, out=out_dir, overrides=overrides,
                            evaluate_base=False)
            metrics = run_compress(spec, data=bundle)
            packed = out_dir / "model.dsz"
            report = inspect(packed)
            coded = save(load(packed), out_dir / "entropy.dsz", entropy=True, ternary_base3=True)
            half = save(load(packed), out_dir / "fp16.dsz", float_dtype="fp16", entropy=True, ternary_base3=True)
            half_top1 = evaluate(load(out_dir / "fp16.dsz"), bundle.val)["top1"] if args.eval_fp16 else None
            row = {
                "row": name, "model": "resnet20 (shortcut B, shared checkpoint)",
                "recipe": recipe, "overrides": overrides,
                "file_bytes": report["totals"]["file_bytes"],
                "ratio_vs_fp32_params": round(fp32_param_bytes / report["totals"]["file_bytes"], 2),
                "ratio_vs_fp32_state": round(fp32_state_bytes / report["totals"]["file_bytes"], 2),
                "top1_before_pack": metrics["val_top1_in_memory"], "top1_from_file": metrics["top1"],
                "test_images": 10 * args.test_per_class if args.test_per_class else 10_000,
                "theoretical_bytes": round(report["totals"]["theoretical_bytes"]),
                "container_bytes": report["totals"]["overhead_bytes"],
                "encodings": sorted({r["encoding"] for r in report["layers"] if r["encoding"] != "-"}),
                "entropy_file_bytes": coded["totals"]["file_bytes"],
                "shannon_code_bytes": round(coded["totals"]["shannon_code_bytes"]),
                "fp16_entropy_file_bytes": half["totals"]["file_bytes"], "top1_from_fp16_entropy_file": half_top1,
                "fp32_param_bytes": fp32_param_bytes, "fp32_state_bytes": fp32_state_bytes,
                "fp32_dsz_bytes": fp32_file, "compress_seconds": metrics["compress_seconds"],
                "note": ("QAT with a tiny budget: accuracy is not the method's; size does not depend on it"
                         if overrides else "layer-wise, default calibration set (1% of train)"),
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as handle:  # row by row: an interrupted run keeps what it measured
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
