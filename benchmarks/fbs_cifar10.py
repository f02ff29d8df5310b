"""FBS on the shared CIFAR-10 ResNet-20: MACs per image, accuracy after a short fine-tune, batch-1 latency.

Run (heavy: hold the shared lock)::

    flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/fbs_cifar10.py --epochs 2

Latency only (seconds, light; no fine-tuning: predictors calibrated on 8 batches, or a saved model)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fbs_cifar10.py --latency-only [--load fbs.dsz]

Writes benchmarks/results/fbs_cifar10.json (fbs_latency.json with --latency-only). Latency: batch 1,
one thread, medians, every model called in turn in the same loop (so load on the machine hits all
alike): the dense model; the dense model with BN folded into its convs (FBSBlock folds BN too); the
dense model compiled like the FBS one (TorchScript + freeze, which also folds BN: the same-toolchain
baseline); the FBS model as a module (`fbs_eager`) and compiled with `script_for_latency` (`fbs`,
the deployment form). Calibrated-only and fine-tuned FBS models run exactly the same ops and shapes.
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
from deepshrink.engine.runlog import RunLog
from deepshrink.prune.fbs_gate import calibrate_predictors
from deepshrink.prune.fbs import apply_fbs, convert_fbs
from deepshrink.prune.fbs_infer import script_for_latency
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


def latency_models(dense: nn.Module, fbs_model: nn.Module) -> dict[str, nn.Module]:
    """The models `batch1_latency` compares (see the module docstring)."""
    return {"dense": dense, "dense_bn_folded": fold_all_bn(dense),
            "dense_torchscript_frozen": script_for_latency(copy.deepcopy(dense)),
            "fbs_eager": fbs_model, "fbs": script_for_latency(fbs_model)}


def measure(args, dense: nn.Module, fbs_model: nn.Module, batch: torch.Tensor) -> tuple[int, int, dict]:
    """(dense MACs, FBS MACs) per image on `batch`, then batch-1 latencies on one thread (+ profile)."""
    if args.save:
        deepshrink.pack(fbs_model, args.save)
    dense_macs = profile(dense, inputs=batch).totals["macs"]
    fbs_macs = profile(fbs_model, inputs=batch).totals["macs"]
    torch.set_num_threads(1)
    models = latency_models(dense, fbs_model)
    if args.profile:
        print_profile(models, batch[:1])
    return dense_macs, fbs_macs, batch1_latency(models, batch, args.rounds)


def latency_report(latency: dict[str, float]) -> dict:
    """Latencies (ms) and the FBS model's speedup against each dense baseline."""
    return {"batch1_latency_ms_1thread": {k: round(v, 3) for k, v in latency.items()},
            "latency_speedup": {"vs_dense": round(latency["dense"] / latency["fbs"], 3),
                                "vs_dense_bn_folded": round(latency["dense_bn_folded"] / latency["fbs"], 3),
                                "vs_dense_torchscript_frozen":
                                    round(latency["dense_torchscript_frozen"] / latency["fbs"], 3),
                                "fbs_eager_vs_dense": round(latency["dense"] / latency["fbs_eager"], 3)}}


def print_profile(models: dict[str, nn.Module], image: torch.Tensor, calls: int = 200) -> None:
    """Where each model's batch-1 time goes: torch.profiler's per-op table (self CPU time)."""
    from torch.profiler import profile as torch_profile

    with torch.inference_mode():
        for name, model in models.items():
            for _ in range(20):
                model(image)
            with torch_profile() as prof:
                for _ in range(calls):
                    model(image)
            print(f"--- {name}: per-op self CPU time over {calls} calls")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def shown(path: str) -> str:
    """`path` relative to the repository when inside it, for the command recorded in a result file."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def write_report(report: dict, out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def latency_only(args, dense: nn.Module, train_loader, batch: torch.Tensor) -> None:
    """MACs and batch-1 latency of an FBS model loaded from `--load`, or calibrated without fine-tuning."""
    if args.load:
        fbs_model, source = deepshrink.load(args.load).eval(), f"loaded from {args.load}"
    else:
        fbs_model = copy.deepcopy(dense)
        recipe = load_recipe({"method": "fbs", "params": {"keep_ratio": args.keep_ratio}})
        apply_fbs(fbs_model, {n: args.keep_ratio for n in select_layers(fbs_model, recipe)})
        calibrate_predictors(fbs_model, train_loader, 8)
        fbs_model, source = convert_fbs(fbs_model.eval()), "predictors calibrated on 8 batches, no fine-tuning"
    dense_macs, fbs_macs, latency = measure(args, dense, fbs_model, batch)
    write_report({"command": f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fbs_cifar10.py --latency-only "
                             f"--keep-ratio {args.keep_ratio} --rounds {args.rounds}"
                             + (f" --load {args.load}" if args.load else "") + f" --out {shown(args.out)}"
                             + (f" --save {args.save}" if args.save else ""),
                  "model": "resnet20 (option B), shared checkpoint", "keep_ratio": args.keep_ratio,
                  "fbs_model": source,
                  "macs_per_image": {"dense": dense_macs, "fbs": fbs_macs, "ratio": round(dense_macs / fbs_macs, 3)},
                  **latency_report(latency),
                  "targets": {"latency_speedup_vs_dense>=1.4": latency["dense"] / latency["fbs"] >= 1.4}},
                 args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(Path.home() / ".cache/deepshrink/cifar10-jpeg"))
    parser.add_argument("--checkpoint", default=str(REPO.parent / "shared/models/resnet20-cifar10jpeg.pt"))
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--schedule-fraction", type=float, default=0.5, help="fraction of steps for d: 1 -> keep")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="train.distill: weight of knowledge distillation from the dense model (0: off)")
    parser.add_argument("--rounds", type=int, default=1000, help="latency samples per model")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images only (smoke runs)")
    parser.add_argument("--latency-only", action="store_true",
                        help="MACs + latency only: no fine-tuning, no accuracy (see --load)")
    parser.add_argument("--load", default=None, help="with --latency-only: a packed FBS model (.dsz) to time")
    parser.add_argument("--save", default=None, help="pack the FBS model (.dsz) here, to re-time it with --load")
    parser.add_argument("--profile", action="store_true", help="also print a per-op profile of each model")
    parser.add_argument("--run-dir", default=None,
                        help="the fine-tune's run folder (last.pt after every epoch); with --resume, continue it")
    parser.add_argument("--resume", action="store_true", help="continue the fine-tune from RUN_DIR/last.pt")
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/fbs_cifar10.json, "
                                                    "or fbs_latency.json with --latency-only)")
    args = parser.parse_args()
    if args.load and not args.latency_only:
        parser.error("--load times a saved model: use it with --latency-only")
    if args.resume and not args.run_dir:
        parser.error("--resume continues a run folder: give it with --run-dir")
    if args.out is None:
        args.out = str(REPO / "benchmarks/results" / ("fbs_latency.json" if args.latency_only else "fbs_cifar10.json"))

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
    if args.latency_only:
        batch = next(iter(test_loader))[0][:256]  # (256, 3, 32, 32) real test images
        return latency_only(args, dense, train_loader, batch)
    dense_top1 = evaluate(dense, test_loader)["top1"]

    recipe = {"method": "fbs", "params": {"keep_ratio": args.keep_ratio, "schedule_fraction": args.schedule_fraction},
              "train": {"epochs": args.epochs, "lr": args.lr, "schedule": "cosine", "batch_size": 128,
                        "distill": args.distill}}

    # the same gating with no fine-tuning at all (predictors calibrated only), for reference
    untuned = copy.deepcopy(dense)
    apply_fbs(untuned, {n: args.keep_ratio for n in select_layers(untuned, load_recipe(recipe))})
    calibrate_predictors(untuned, train_loader, 8)
    untuned_top1 = evaluate(convert_fbs(untuned.eval()), test_loader)["top1"]

    start = time.perf_counter()
    result = deepshrink.compress(dense, recipe, train_data=train_loader, val_data=test_loader,
                                 out_dir=args.run_dir, resume=args.resume)
    fbs_model = result.model.eval()
    fine_tune_seconds = time.perf_counter() - start
    if args.run_dir:  # a resumed run: every epoch's time from the run's log, not only this process's
        log = RunLog(args.run_dir, progress=False)
        log.load_history()
        fine_tune_seconds = log.epoch_seconds() or fine_tune_seconds
    batch = next(iter(test_loader))[0][:256]  # (256, 3, 32, 32) real test images
    dense_macs, fbs_macs, latency = measure(args, dense, fbs_model, batch)
    report = {
        "command": f"flock /tmp/deepshrink-heavy.lock .venv/bin/python benchmarks/fbs_cifar10.py "
                   f"--epochs {args.epochs} --keep-ratio {args.keep_ratio} --lr {args.lr} "
                   f"--schedule-fraction {args.schedule_fraction} --distill {args.distill} --out {shown(args.out)}"
                   + (f" --save {args.save}" if args.save else "")
                   + (f" --run-dir {args.run_dir} [--resume]" if args.run_dir else ""),
        "model": "resnet20 (option B), shared checkpoint", "keep_ratio": args.keep_ratio,
        "fine_tune": {"epochs": args.epochs, "lr": args.lr, "schedule": "cosine", "batch_size": 128,
                      "keep_ratio_schedule": f"1.0 -> d over the first {args.schedule_fraction:g} of the steps",
                      "distill": args.distill, "seconds": round(fine_tune_seconds, 1)},
        "dense_top1": dense_top1, "fbs_top1_no_finetune": untuned_top1, "fbs_top1": result.metrics["top1"],
        "top1_drop": round(dense_top1 - result.metrics["top1"], 2),
        "macs_per_image": {"dense": dense_macs, "fbs": fbs_macs, "ratio": round(dense_macs / fbs_macs, 3)},
        **latency_report(latency),
        "targets": {"macs_ratio>=2": dense_macs / fbs_macs >= 2,
                    "top1_drop<=2.0": dense_top1 - result.metrics["top1"] <= 2.0,
                    "latency_speedup_vs_dense>=1.4": latency["dense"] / latency["fbs"] >= 1.4},
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
