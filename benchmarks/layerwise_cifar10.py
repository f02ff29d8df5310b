"""Layer-wise compression of the shared CIFAR-10 ResNet-20 with 1% of the training data, each method beside
its naive baseline; plus ResNet-18 at 224x224 (random weights) to show memory stays bounded.

Calibration: 500 training images (`subset(train, ratio=0.01, seed=0)`, stratified); first conv and fc stay
float. Each finished row appends one JSON line to benchmarks/results/layerwise_cifar10.jsonl; rows already
there are skipped (resumable). Heavy: hold the shared lock::

    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/layerwise_cifar10.py --only ldnq5,ldnq_rtn5
    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/layerwise_cifar10.py --resnet18
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time
from pathlib import Path

import torch

import deepshrink
from deepshrink.data import get_dataset, make_loader, subset

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results/layerwise_cifar10.jsonl"
CHECKPOINT = Path("/work/shared/models/resnet20-cifar10jpeg.pt")
CIFAR_ROOT = Path.home() / ".cache/deepshrink/cifar10-jpeg"

# PQ at >= 12x on the compressed conv weights (codebooks counted as float32): d = 9 (one 3x3 kernel),
# d = 4 for 1x1 shortcuts, K chosen per stage so the codebook does not dominate small layers.
PQ_LAYERS = [{"pattern": "layer1.*", "params": {"n_centroids": 32}},
             {"pattern": "layer2.*", "params": {"n_centroids": 64}},
             {"pattern": "layer3.*", "params": {"n_centroids": 128}}]

# Since centroids are stored in float16 (PQConfig.codebook_fp16, the paper's choice) the codebooks cost
# half as much, so the same >= 12x affords twice the centroids (the `*12x16` rows; the `*12x` rows above
# were measured with float32 codebooks). Shortcut projections keep fewer: their codebooks would dominate.
PQ_LAYERS16 = [{"pattern": "layer1.*", "params": {"n_centroids": 64}},
               {"pattern": "layer2.*", "params": {"n_centroids": 128}},
               {"pattern": "layer3.*", "params": {"n_centroids": 256}},
               {"pattern": "*.downsample.*", "params": {"n_centroids": 32}}]

# The same, spending the rest of the 12x budget on layer3 (the bulk of the weights): K = 320 there.
PQ_LAYERS16_K320 = PQ_LAYERS16[:2] + [{"pattern": "layer3.*", "params": {"n_centroids": 320}}, PQ_LAYERS16[3]]

# row id -> (recipe, target drop in points or None for a baseline)
ROWS = {
    "ldnq3": ({"method": "ldnq", "params": {"levels": 3}}, 3.0),
    "ldnq_rtn3": ({"method": "ldnq_rtn", "params": {"levels": 3}}, None),
    "ldnq5": ({"method": "ldnq", "params": {"levels": 5}}, 1.2),
    "ldnq_rtn5": ({"method": "ldnq_rtn", "params": {"levels": 5}}, None),
    "ldnq7": ({"method": "ldnq", "params": {"levels": 7}}, 0.5),
    "ldnq_rtn7": ({"method": "ldnq_rtn", "params": {"levels": 7}}, None),
    "lobs50": ({"method": "lobs", "params": {"sparsity": 0.5}}, 0.5),
    "magnitude50": ({"method": "magnitude", "params": {"sparsity": 0.5}}, None),
    "lobs70": ({"method": "lobs", "params": {"sparsity": 0.7}}, 1.5),
    "magnitude70": ({"method": "magnitude", "params": {"sparsity": 0.7}}, None),
    "lobs80": ({"method": "lobs", "params": {"sparsity": 0.8}}, 4.0),
    "magnitude80": ({"method": "magnitude", "params": {"sparsity": 0.8}}, None),
    "lobs70_oneshot": ({"method": "lobs", "params": {"sparsity": 0.7, "mode": "one_shot"}}, None),
    "pq12x": ({"method": "pq", "params": {}, "layers": PQ_LAYERS}, 2.0),
    "kmeans12x": ({"method": "kmeans", "params": {}, "layers": PQ_LAYERS}, None),
    "pq12x_layer_ft": ({"method": "pq", "params": {"layer_finetune_steps": 10, "layer_finetune_lr": 1e-4},
                        "layers": PQ_LAYERS}, 2.0),
    "pq12x_train_ft1": ({"method": "pq", "params": {"finetune_epochs": 1, "finetune_lr": 0.002},
                         "train": {"epochs": 1, "batch_size": 128, "log_every": 100}, "layers": PQ_LAYERS}, 1.0),
    "pq12x16": ({"method": "pq", "params": {}, "layers": PQ_LAYERS16}, 2.0),
    "kmeans12x16": ({"method": "kmeans", "params": {}, "layers": PQ_LAYERS16}, None),
    "pq12x16_distill": ({"method": "pq", "params": {"layer_finetune_steps": 10, "global_distill_steps": 300,
                                                    "global_distill_lr": 1e-4}, "layers": PQ_LAYERS16}, 2.0),
    "pq12x16_train_ft1": ({"method": "pq", "params": {"layer_finetune_steps": 10, "finetune_epochs": 1,
                                                      "finetune_lr": 0.002},
                           "train": {"epochs": 1, "batch_size": 128, "log_every": 100}, "layers": PQ_LAYERS16}, 1.0),
    "ldnq3_cascade": ({"method": "ldnq", "params": {"levels": 3, "cascade_steps": 10, "cascade_lr": 1e-4}}, 3.0),
    "pq12x16_k320_distill": ({"method": "pq", "params": {"layer_finetune_steps": 10, "global_distill_steps": 300,
                                                         "global_distill_lr": 3e-4}, "layers": PQ_LAYERS16_K320}, 2.0),
    "pq12x16_k320_train_ft1": ({"method": "pq", "params": {"layer_finetune_steps": 10, "global_distill_steps": 300,
                                                           "global_distill_lr": 3e-4, "finetune_epochs": 1,
                                                           "finetune_lr": 0.005},
                                "train": {"epochs": 1, "batch_size": 128, "log_every": 100},
                                "layers": PQ_LAYERS16_K320}, 1.0),
    "pq12x16_k320_train_ft1_kd": ({"method": "pq", "params": {"layer_finetune_steps": 10, "global_distill_steps": 300,
                                                              "global_distill_lr": 3e-4, "finetune_epochs": 1,
                                                              "finetune_lr": 0.005, "finetune_distill": 1.0},
                                   "train": {"epochs": 1, "batch_size": 128, "log_every": 100},
                                   "layers": PQ_LAYERS16_K320}, 1.0),
    # the same, without weight decay on the centroids / BN / biases (decay pulls centroids toward 0)
    "pq12x16_k320_train_ft1_kd_wd0": ({"method": "pq", "params": {"layer_finetune_steps": 10, "global_distill_steps": 300,
                                                                  "global_distill_lr": 3e-4, "finetune_epochs": 1,
                                                                  "finetune_lr": 0.005, "finetune_distill": 1.0},
                                       "train": {"epochs": 1, "batch_size": 128, "log_every": 100, "weight_decay": 0.0},
                                       "layers": PQ_LAYERS16_K320}, 1.0),
    # the K = 320 layout with no fine-tuning at all: the time of the method itself (target <= 60 s)
    "pq12x16_k320": ({"method": "pq", "params": {}, "layers": PQ_LAYERS16_K320}, 2.0),
    "kmeans12x16_k320": ({"method": "kmeans", "params": {}, "layers": PQ_LAYERS16_K320}, None),
    "lobs70_global": ({"method": "lobs", "params": {"sparsity": 0.7, "scope": "global"}}, None),
    "lobs80_oneshot": ({"method": "lobs", "params": {"sparsity": 0.8, "mode": "one_shot"}}, None),
    "lobs70_ldnq5": ({"method": "ldnq", "params": {"levels": 5, "sparsity": 0.7}}, None),
}


def read_rows(path: Path) -> dict[str, dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return {row["row"]: row for row in map(json.loads, filter(None, lines))}


def load_resnet20() -> torch.nn.Module:
    model = deepshrink.create_model("resnet20", shortcut="B")
    model.load_state_dict(torch.load(CHECKPOINT, weights_only=True))
    return model.eval()


def conv_ratio(report: dict) -> float:
    """32-bit size over compressed size of the compressed conv layers only."""
    convs = {n: r for n, r in report["layers"].items() if n != "fc"}
    bits = sum(r["bits_per_weight"] * r["numel"] for r in convs.values())
    return 32.0 * sum(r["numel"] for r in convs.values()) / bits


def run_row(name, model, calib, test, fp_top1, train=None) -> dict:
    recipe, target = ROWS[name]
    start = time.perf_counter()
    needs_train = recipe["params"].get("finetune_epochs", 0) > 0  # PQ's global fine-tune: full train set
    result = deepshrink.compress(model, recipe, calib_data=calib, train_data=train if needs_train else None)
    wall = time.perf_counter() - start
    top1 = deepshrink.evaluate(result.model, test)["top1"]
    report = result.model.deepshrink_report
    return {"row": name, "recipe": recipe, "top1": top1, "fp_top1": fp_top1, "drop": round(fp_top1 - top1, 2),
            "target_drop": target, "met": None if target is None else fp_top1 - top1 <= target,
            "bits_per_weight": round(report["bits_per_weight"], 4), "conv_ratio": round(conv_ratio(report), 2),
            "compress_seconds": round(wall, 1),
            "layer_seconds": {n: round(r["seconds"], 2) for n, r in report["layers"].items()},
            "layer_bits": {n: round(r["bits_per_weight"], 3) for n, r in report["layers"].items()},
            "threads": torch.get_num_threads()}


def resnet18_row(images: int, batch: int) -> dict:
    """ResNet-18 (random weights, ImageNet shape) pruned by one-shot L-OBS at 224x224: time and peak RSS."""
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet18", num_classes=1000).eval()
    calib = [(torch.randn(batch, 3, 224, 224), torch.zeros(batch, dtype=torch.long)) for _ in range(images // batch)]
    start = time.perf_counter()
    result = deepshrink.compress(model, {"method": "lobs", "params": {"sparsity": 0.5, "mode": "one_shot"}}, calib_data=calib)
    wall = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report = result.model.deepshrink_report
    return {"row": "resnet18_224_lobs50", "images": images, "compress_seconds": round(wall, 1),
            "peak_rss_gib": round(peak_gib, 2), "bits_per_weight": round(report["bits_per_weight"], 4),
            "layer_seconds": {n: round(r["seconds"], 2) for n, r in report["layers"].items()}}


def append(row: dict, commit: bool) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in row if k not in ("layer_seconds", "layer_bits", "recipe")}), flush=True)
    if commit:
        rel = str(RESULTS.relative_to(REPO))
        subprocess.run(["git", "add", rel], cwd=REPO, check=False)
        subprocess.run(["git", "commit", "-q", "-m", f"layerwise benchmark row {row['row']}", "--", rel],
                       cwd=REPO, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ROWS), help="comma-separated row ids")
    parser.add_argument("--test-limit", type=int, default=10000, help="test images evaluated (first N)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads can be 30x slower)")
    parser.add_argument("--resnet18", action="store_true", help="run the ResNet-18 224x224 memory row instead")
    parser.add_argument("--commit", action="store_true", help="git-commit the results file after each row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    done = read_rows(RESULTS)
    if args.resnet18:
        if "resnet18_224_lobs50" not in done:
            append(resnet18_row(images=64, batch=16), args.commit)
        return
    train = get_dataset("cifar10", "train", root=CIFAR_ROOT)
    test = get_dataset("cifar10", "test", root=CIFAR_ROOT)
    if args.test_limit < len(test):
        test = test.select(torch.arange(args.test_limit))
    calib = make_loader(subset(train, ratio=0.01, seed=0), 100, train=False)
    test_loader = make_loader(test, 500, train=False)
    model = load_resnet20()
    fp_top1 = deepshrink.evaluate(model, test_loader)["top1"]
    for name in args.only.split(","):
        if name in done:
            continue
        if name not in ROWS:
            raise SystemExit(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
        train_loader = make_loader(train, 128, train=True, seed=0)
        append(run_row(name, model, calib, test_loader, fp_top1, train_loader), args.commit)


if __name__ == "__main__":
    main()
