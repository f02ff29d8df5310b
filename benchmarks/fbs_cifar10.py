"""FBS on the shared CIFAR-10 ResNet-20: MACs per image, accuracy after a short fine-tune, batch-1 latency.

Run (heavy: hold the shared lock)::

    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/fbs_cifar10.py --epochs 2

Writes benchmarks/results/fbs_cifar10.json (+ .md). Latency: batch 1, one thread, the dense model,
the dense model with BN folded into its convs (the fair baseline: FBSBlock folds BN too) and the FBS
model, called in turn in the same loop (so load on the machine hits all three alike); medians.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

import deepshrink
from deepshrink.analysis.complexity import profile
from deepshrink.data import get_dataset, make_loader
from deepshrink.engine import evaluate
from deepshrink.prune.fbs_gate import calibrate_predictors
from deepshrink.prune.fbs import apply_fbs, convert_fbs
from deepshrink.config import load_recipe, select_layers

REPO = Path(__file__).resolve().parents[1]


def fold_all_bn(model: nn.Module) -> nn.Module:
    """A copy of a ResNet with every conv -> BN pair folded into one conv (BN becomes Identity)."""
    from deepshrink.prune.fbs_infer import fold_bn

    model = copy.deepcopy(model).eval()
    pairs = []
    for name, module in model.named_modules():
        for child, sub in module.named_children():
            if isinstance(sub, nn.Conv2d):
                bn_name = child.replace("conv", "bn") if child.startswith("conv") else None
                bn = getattr(module, bn_name, None) if bn_name else None
                if child == "0" and isinstance(module, nn.Sequential):
                    bn_name, bn = "1", module[1]
                if isinstance(bn, nn.BatchNorm2d):
                    pairs.append((module, child, bn_name, sub, bn))
    with torch.no_grad():
        for module, child, bn_name, conv, bn in pairs:
            weight, bias = fold_bn(conv, bn)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              bias=True)
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
            setattr(module, child, fused)
            setattr(module, bn_name, nn.Identity())
    return model


def batch1_latency(models: dict[str, nn.Module], images: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median batch-1 latency (ms) of each model, interleaved call by call over the same images."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for i in range(20):
            for model in models.values():
                model(images[i : i + 1])
        for i in range(rounds):
            x = images[i % len(images)].unsqueeze(0)  # (1, 3, 32, 32)
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(Path.home() / ".cache/deepshrink/cifar10-jpeg"))
    parser.add_argument("--checkpoint", default=str(REPO.parent / "shared/models/resnet20-cifar10jpeg.pt"))
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--schedule-fraction", type=float, default=0.5, help="fraction of steps for d: 1 -> keep")
    parser.add_argument("--rounds", type=int, default=1000, help="latency samples per model")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images only (smoke runs)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/fbs_cifar10.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    train = get_dataset("cifar10", "train", root=args.data_root)
    test = get_dataset("cifar10", "test", root=args.data_root)
    if args.test_limit:
        test = test.select(torch.arange(args.test_limit))
    train_loader = make_loader(train, 128, train=True, seed=0)
    test_loader = make_loader(test, 500, train=False)

    dense = deepshrink.create_model("resnet20", shortcut="B")
    dense.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    dense.eval()
    dense_top1 = evaluate(dense, test_loader)["top1"]

    recipe = {"method": "fbs", "params": {"keep_ratio": args.keep_ratio, "schedule_fraction": args.schedule_fraction},
              "train": {"epochs": args.epochs, "lr": args.lr, "schedule": "cosine", "batch_size": 128}}

    # the same gating with no fine-tuning at all (predictors calibrated only), for reference
    untuned = copy.deepcopy(dense)
    apply_fbs(untuned, {n: args.keep_ratio for n in select_layers(untuned, load_recipe(recipe))})
    calibrate_predictors(untuned, train_loader, 8)
    untuned_top1 = evaluate(convert_fbs(untuned.eval()), test_loader)["top1"]

    start = time.perf_counter()
    result = deepshrink.compress(dense, recipe, train_data=train_loader, val_data=test_loader)
    fbs_model = result.model.eval()
    fine_tune_seconds = time.perf_counter() - start

    batch = next(iter(test_loader))[0][:256]  # (256, 3, 32, 32) real test images
    dense_macs = profile(dense, inputs=batch).totals["macs"]
    fbs_macs = profile(fbs_model, inputs=batch).totals["macs"]

    torch.set_num_threads(1)
    latency = batch1_latency({"dense": dense, "dense_bn_folded": fold_all_bn(dense), "fbs": fbs_model},
                             batch, args.rounds)
    report = {
        "command": f"flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/fbs_cifar10.py "
                   f"--epochs {args.epochs} --keep-ratio {args.keep_ratio} --lr {args.lr} "
                   f"--schedule-fraction {args.schedule_fraction} --out {args.out}",
        "model": "resnet20 (option B), shared checkpoint", "keep_ratio": args.keep_ratio,
        "fine_tune": {"epochs": args.epochs, "lr": args.lr, "schedule": "cosine", "batch_size": 128,
                      "keep_ratio_schedule": f"1.0 -> d over the first {args.schedule_fraction:g} of the steps", "seconds": round(fine_tune_seconds, 1)},
        "dense_top1": dense_top1, "fbs_top1_no_finetune": untuned_top1, "fbs_top1": result.metrics["top1"],
        "top1_drop": round(dense_top1 - result.metrics["top1"], 2),
        "macs_per_image": {"dense": dense_macs, "fbs": fbs_macs, "ratio": round(dense_macs / fbs_macs, 3)},
        "batch1_latency_ms_1thread": {k: round(v, 3) for k, v in latency.items()},
        "latency_speedup": {"vs_dense": round(latency["dense"] / latency["fbs"], 3),
                            "vs_dense_bn_folded": round(latency["dense_bn_folded"] / latency["fbs"], 3)},
        "targets": {"macs_ratio>=2": dense_macs / fbs_macs >= 2,
                    "top1_drop<=2.0": dense_top1 - result.metrics["top1"] <= 2.0,
                    "latency_speedup_vs_dense>=1.4": latency["dense"] / latency["fbs"] >= 1.4},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
