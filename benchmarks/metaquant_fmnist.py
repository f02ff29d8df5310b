"""Meta-Quant vs the plain STE at a low epoch count: LeNet-5 on Fashion-MNIST, quantized from a float model.

A float LeNet-5 is trained first (`--float-epochs`, seed 0); every run quantizes a copy of it with the
same data order, optimizer, schedule and budget for every run (per seed); only the gradient
through the weight quantizer differs: the QAT engineer's `bwn` / `dorefa` methods (STE) against
`metaquant` with the same quantizer and each meta network. conv1 and the last fc stay float
(keep_first_last); activations are float. Test top-1 after every epoch is recorded (convergence).

    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/metaquant_fmnist.py

Writes benchmarks/results/metaquant_fmnist.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

import deepshrink
from deepshrink.config import TrainConfig
from deepshrink.data import get_dataset, make_loader
from deepshrink.engine import Trainer, evaluate
from deepshrink.errors import UserError

REPO = Path(__file__).resolve().parents[1]

RUNS = {  # name -> (quantizer family, recipe without train)
    "bwn/ste": ("bwn", {"method": "bwn", "params": {"per_channel": True}}),
    "bwn/metaquant-multifc": ("bwn", {"method": "metaquant", "params": {"quantizer": "bwn", "meta_net": "multifc"}}),
    "bwn/metaquant-fc-grad": ("bwn", {"method": "metaquant", "params": {"quantizer": "bwn", "meta_net": "fc-grad"}}),
    "bwn/metaquant-lstmfc": ("bwn", {"method": "metaquant", "params": {"quantizer": "bwn", "meta_net": "lstmfc"}}),
    "dorefa-w2/ste": ("dorefa", {"method": "dorefa", "params": {"weight_bits": 2, "act_bits": 32}}),
    "dorefa-w2/metaquant-multifc": ("dorefa", {"method": "metaquant",
                                               "params": {"quantizer": "dorefa", "weight_bits": 2,
                                                          "meta_net": "multifc"}}),
}
# DoReFa's k-bit weights lie in [-1, 1] whatever the float scale; plain LeNet-5 has no BatchNorm to absorb
# that, so there both estimators fail (the runs are kept to show it): compare DoReFa with --batch-norm
# (LeNet-5 with BatchNorm after each hidden conv/fc).


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--float-epochs", type=float, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", default=None, help="comma-separated run names")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images (smoke runs)")
    parser.add_argument("--batch-norm", action="store_true", help="LeNet-5 with BatchNorm (create_model batch_norm=True)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/metaquant_fmnist.json"))
    args = parser.parse_args()

    train = get_dataset("fashion-mnist", "train")
    if args.train_limit:
        train = train.select(torch.arange(args.train_limit))
    test_loader = make_loader(get_dataset("fashion-mnist", "test"), 1000, train=False)
    names = args.only.split(",") if args.only else list(RUNS)
    torch.manual_seed(0)
    base = deepshrink.create_model("lenet5", num_classes=10, in_channels=1, batch_norm=args.batch_norm)
    Trainer(base, make_loader(train, 128, train=True, seed=0, augment=False), None,
            TrainConfig(epochs=args.float_epochs, lr=0.05, schedule="cosine", log_every=10_000)).fit()
    float_top1 = evaluate(base, test_loader)["top1"]
    results = {}
    for name in names:
        _, recipe = RUNS[name]
        per_seed = []
        for seed in args.seeds:
            model = copy.deepcopy(base)
            loader = make_loader(train, 128, train=True, seed=seed, augment=False)
            full = {**recipe, "train": {"epochs": args.epochs, "lr": args.lr, "schedule": "cosine", "seed": seed,
                                        "batch_size": 128, "log_every": 10_000}}
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as run_dir:
                try:
                    result = deepshrink.compress(model, full, train_data=loader, val_data=test_loader,
                                                 out_dir=run_dir)
                except UserError as exc:  # a diverged run is a result too: record it, go on
                    per_seed.append({"seed": seed, "diverged": str(exc), "final_top1": None})
                    print(name, per_seed[-1], flush=True)
                    continue
                curve = [json.loads(line)["val_top1"] for line in open(Path(run_dir) / "metrics.jsonl")]
            per_seed.append({"seed": seed, "val_top1_per_epoch": curve, "final_top1": result.metrics["top1"],
                             "seconds": round(time.perf_counter() - start, 1)})
            print(name, per_seed[-1], flush=True)
        finals = [r["final_top1"] for r in per_seed if r["final_top1"] is not None]
        results[name] = {"runs": per_seed, "diverged_runs": len(per_seed) - len(finals),
                         "final_top1_mean_of_converged": sum(finals) / len(finals) if finals else None}

    report = {
        "command": "flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/metaquant_fmnist.py "
                   f"--epochs {args.epochs} --lr {args.lr} --float-epochs {args.float_epochs} --seeds {' '.join(map(str, args.seeds))}"
                   + (f" --only {args.only}" if args.only else "") + (" --batch-norm" if args.batch_norm else "")
                   + (f" --out {args.out}" if args.out != parser.get_default("out") else ""),
        "float_top1": float_top1,
        "setup": ("LeNet-5 with BatchNorm" if args.batch_norm else "LeNet-5") + " on Fashion-MNIST "
                 "(60k train, 10k test) quantized from the float model above; "
                 "SGD Nesterov 0.9, cosine, batch 128, "
                 "no augmentation; conv1 and the last fc float; meta networks hidden 32, Adam 1e-3",
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v["final_top1_mean_of_converged"] for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
