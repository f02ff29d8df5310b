"""Co-Prune on a real domain pair: CIFAR-10 (source) -> colour-inverted CIFAR-10 (target, little labelled data).

Source: the shared ResNet-20 trained on CIFAR-10 JPEG. Target domain: the same classes with every pixel
inverted (255 - x), a strong low-level shift (the source model drops to near chance on it), with only
`--per-class` labelled training images per class (stratified, seed 0); evaluation on all 10,000 inverted
test images. Every pruned run starts from the source weights, trains on the same target subset with
the same budget, and keeps the same fraction of weights in every layer except the first conv and fc:

- coprune:      masks from alpha |W_src| + (1 - alpha) |W_tgt|, alpha 1 -> 0 over 4 stages
- target-only:  the same schedule with alpha = 0 (plain magnitude pruning on the target weights)
- source-only:  alpha = 1 throughout (masks from the source weights alone)

plus two unpruned references (the source model as is, and dense fine-tuning on the target subset).

    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/coprune_cifar10_inverted.py

Writes benchmarks/results/coprune_cifar10_inverted.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import deepshrink
from deepshrink.config import TrainConfig
from deepshrink.data import TensorImageDataset, get_dataset, make_loader, subset
from deepshrink.engine import Trainer, evaluate

REPO = Path(__file__).resolve().parents[1]


def inverted(dataset) -> TensorImageDataset:
    """The colour-inverted copy of a uint8 image data set (same labels and normalisation)."""
    return TensorImageDataset(255 - dataset.images, dataset.targets, dataset.meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(Path.home() / ".cache/deepshrink/cifar10-jpeg"))
    parser.add_argument("--checkpoint", default=str(REPO.parent / "shared/models/resnet20-cifar10jpeg.pt"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--keep-ratio", type=float, default=0.3)
    parser.add_argument("--epochs", type=float, default=15)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images only (smoke runs)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/coprune_cifar10_inverted.json"))
    args = parser.parse_args()

    target_train = inverted(subset(get_dataset("cifar10", "train", root=args.data_root), per_class=args.per_class))
    target_test = inverted(get_dataset("cifar10", "test", root=args.data_root))
    if args.test_limit:
        target_test = target_test.select(torch.arange(args.test_limit))
    test_loader = make_loader(target_test, 500, train=False)
    source = deepshrink.create_model("resnet20", shortcut="B")
    source.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    train = {"epochs": args.epochs, "lr": args.lr, "batch_size": 64, "schedule": "cosine", "log_every": 1000}

    rows = {"source_model_no_adaptation": {"top1": evaluate(source, test_loader)["top1"]}}
    start = time.perf_counter()
    dense = copy.deepcopy(source)
    Trainer(dense, make_loader(target_train, 64, train=True, seed=0), None, TrainConfig(**train)).fit()
    rows["dense_finetune_target"] = {"top1": evaluate(dense, test_loader)["top1"],
                                     "seconds": round(time.perf_counter() - start, 1)}
    variants = {"coprune": (1.0, 0.0), "target_only_magnitude": (0.0, 0.0), "source_only_magnitude": (1.0, 1.0)}
    for name, (alpha_start, alpha_end) in variants.items():
        accs = []
        for seed in args.seeds if name != "source_only_magnitude" else args.seeds[:1]:
            recipe = {"method": "coprune", "params": {"keep_ratio": args.keep_ratio, "alpha_start": alpha_start,
                                                      "alpha_end": alpha_end, "stages": 4},
                      "train": {**train, "seed": seed}}
            loader = make_loader(target_train, 64, train=True, seed=seed)
            result = deepshrink.compress(source, recipe, train_data=loader)  # no per-epoch evaluation
            accs.append(evaluate(result.model, test_loader)["top1"])
            print(name, seed, accs[-1], flush=True)
        rows[name] = {"top1_per_seed": accs, "top1_mean": sum(accs) / len(accs), "seeds": args.seeds[: len(accs)]}

    report = {
        "command": "flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/coprune_cifar10_inverted.py "
                   f"--per-class {args.per_class} --keep-ratio {args.keep_ratio} --epochs {args.epochs} "
                   f"--lr {args.lr} --seeds {' '.join(map(str, args.seeds))}",
        "domain_pair": "source CIFAR-10 JPEG (shared ResNet-20, option B) -> target colour-inverted CIFAR-10 "
                       f"({args.per_class} labelled train images per class; test: 10,000 inverted test images)",
        "keep_ratio": args.keep_ratio, "pruned_layers": "every conv except the stem; fc kept (keep_first_last)",
        "train": train, "results_top1": rows,
        "coprune_minus_target_only": round(rows["coprune"]["top1_mean"] - rows["target_only_magnitude"]["top1_mean"], 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
