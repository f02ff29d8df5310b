"""Where LSQ loses accuracy before training: one quantizer kind at a time, the paper's step init against
the least-error activation step (`act_init: mse`), on the shared CIFAR-10 ResNet-20.

For each setting the float network gets LSQ quantizers on every conv but the first (fc stays float),
initialised from one training batch of 128 as `compress` does, and is scored with BatchNorm in train
mode (batch statistics, as during fine-tuning) on a fixed shuffled 20% of the test set in batches of
500. Light (about a minute, one thread)::

    .venv/bin/python benchmarks/lsq_act_init.py    # -> benchmarks/results/lsq_act_init.json
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import deepshrink
from deepshrink.data import get_dataset, make_loader, subset
from deepshrink.pipeline import build_model

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [(32, 32, "paper"), (2, 32, "paper"), (32, 2, "paper"), (32, 2, "mse"), (2, 2, "paper"), (2, 2, "mse"),
            (3, 32, "paper"), (32, 3, "paper"), (32, 3, "mse")]


def shuffled_batches(dataset, batch: int, seed: int = 0) -> list:
    """Batches of a fixed random order: the folder lists images class by class, and train-mode BN
    statistics of a one-class batch would say nothing."""
    pairs = list(make_loader(dataset, 500, train=False))
    x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i:i + batch]], y[order[i:i + batch]]) for i in range(0, len(y), batch)]


@torch.no_grad()
def train_bn_top1(model, batches) -> float:
    model = copy.deepcopy(model).train()  # batch statistics; the copy keeps the running ones untouched
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return round(100.0 * correct / sum(len(y) for _, y in batches), 2)


def quantized(fp, weight_bits: int, act_bits: int, act_init: str, calib_batch):
    recipe = {"method": "lsq", "keep_first_last": True,
              "params": {"weight_bits": weight_bits, "act_bits": act_bits, "act_init": act_init}}
    return deepshrink.training_form(fp, recipe, calib_batch)  # the quantizer set-up compress trains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(Path.home() / ".cache/deepshrink/cifar10-jpeg"))
    parser.add_argument("--checkpoint", default=str(REPO.parent / "shared/models/resnet20-cifar10jpeg.pt"))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/lsq_act_init.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    fp = build_model("resnet20", {"shortcut": "B"}, args.checkpoint).eval()
    calib_batch = next(iter(make_loader(get_dataset("cifar10", "train", root=args.data_root), 128, train=True, seed=0)))
    batches = shuffled_batches(subset(get_dataset("cifar10", "test", root=args.data_root), ratio=0.2, seed=0), 500)
    rows = []
    for weight_bits, act_bits, act_init in SETTINGS:
        is_float = (weight_bits, act_bits) == (32, 32)
        model = fp if is_float else quantized(fp, weight_bits, act_bits, act_init, calib_batch)
        rows.append({"weight_bits": weight_bits, "act_bits": act_bits, "act_init": act_init,
                     "top1_train_bn": train_bn_top1(model, batches)})
        print(json.dumps(rows[-1]), flush=True)
    report = {"command": ".venv/bin/python benchmarks/lsq_act_init.py",
              "what": "untrained LSQ quantizers on the shared ResNet-20 (first conv and fc float), top-1 with "
                      "train-mode BN on a shuffled 20% of the CIFAR-10 test set", "test_images": 2000, "rows": rows}
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
