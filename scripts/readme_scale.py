"""The README's ImageNet-size tables (issue 24): the generated image folder, ResNet-50 and ResNet-18 at 224x224
with random weights, time and memory only. Used by scripts/readme_results.py.

Each table reads the suite's results (`deepshrink bench --suite resnet50-imagenet-like` / `resnet18-imagenet-like`)
when its folder under benchmarks/results/ has them. Until then it reads the files the retired scripts wrote,
and says which script made them and the last commit that had it.
"""
from __future__ import annotations

import json
from pathlib import Path

from deepshrink.bench.results import RESULTS_FILE

SUITES = ("resnet50-imagenet-like", "resnet18-imagenet-like")  # folder names under benchmarks/results/
# retired script -> the last commit that had it (`git log -1 --format=%h -- benchmarks/SCRIPT`)
RETIRED = {"imagefolder_scale.py": "aef4d0a", "resnet50_layerwise.py": "ba66a6b", "layerwise_cifar10.py": "0ce7739"}
TARGET_MINUTES, TARGET_GIB = 20, 8  # issue 24, item 2: each ResNet-50 row
NOT_IMAGENET = ("Generated JPEGs, not ImageNet (none exists on these machines), through networks with random "
                "weights: time and memory only, no accuracy.")


def scale_tables(results_root: Path, suite_section) -> list[str]:
    """The ImageNet-size section: each suite's own table (by `suite_section(folder)`) where it has results, else the
    retired scripts' tables."""
    out = ["### ImageNet size: a generated image folder, ResNet-50 and ResNet-18 at 224x224 (random weights)", "",
           NOT_IMAGENET, ""]
    done = [name for name in SUITES if (results_root / name / RESULTS_FILE).is_file()]
    for name in done:
        out += suite_section(results_root / name)
    # the retired scripts' figures stay for what the suite has not measured yet (its folder row, a method's row)
    ran = _suite_rows(results_root / "resnet50-imagenet-like")
    if not any("index_cold_s" in r for r in ran):
        out += folder_table(_json(results_root / "imagefolder_scale.json"), partly="resnet50-imagenet-like" in done)
    out += resnet50_table(_json(results_root / "resnet50_layerwise.json"), skip={r.get("method") for r in ran})
    if "resnet18-imagenet-like" not in done:
        out += resnet18_line(results_root / "layerwise_cifar10.jsonl")
    return out if len(out) > 4 else []


def _suite_rows(folder: Path) -> list[dict]:
    """The suite's finished rows (none when it has not run)."""
    from deepshrink.bench.results import current_results, latest_by_key

    if not (folder / RESULTS_FILE).is_file():
        return []
    return [r for r in latest_by_key(current_results(folder)).values() if r.get("status") == "ok"]


def _retired(script: str, suite: str, options: str = "", partly: bool = False) -> str:
    return (f"Made by `benchmarks/{script}{options}`, since removed (last in commit {RETIRED[script]}); its "
            f"measurements are now the suite `deepshrink bench --suite {suite}`, which has "
            f"{'not run these rows' if partly else 'no results here'} yet.")


def folder_table(result: dict | None, partly: bool = False) -> list[str]:
    """imagefolder_scale.json: index build and reopen, a full stat, memory added by opening, decode vs loader."""
    if not result:
        return []
    width, height = result["image_size"][1], result["image_size"][0]
    return ["#### The image folder", "", _retired("imagefolder_scale.py", "resnet50-imagenet-like", partly=partly) +
            f" Command: `{result['command']}` ({result.get('machine', '?')}).", "",
            "| images | classes | size | index build | reopen | stat every file | open adds | decode alone, 1 process "
            "| loader |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
            f"| {result['images']:,} | {result['classes']:,} | {width}x{height} | {result['index_cold_s']:.2f} s | "
            f"{result['index_reopen_s']:.2f} s | {result['full_scan_s']:.2f} s | "
            f"{result['rss_added_by_open_mb']:.0f} MiB | "
            f"{result['decode_alone_img_s']:.0f} img/s | {result['loader_img_s']:.0f} img/s "
            f"({result['loader_workers']} workers) |", "",
            "Images per second at 224x224 (random-resized-crop + flip); the index is the cached file list, reopened "
            "while no class folder changes.", ""]


def resnet50_table(result: dict | None, skip: set = frozenset()) -> list[str]:
    """resnet50_layerwise.json: per method, wall time and peak memory against issue 24's targets; the methods in
    `skip` (those the suite has measured itself) left out."""
    rows = [r for r in (result or {}).get("rows") or [] if r["method"] not in skip]
    if not rows:
        return []
    commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    heading = "#### ResNet-50, 1,024 calibration images" + (" (the rows the suite has not run yet)" if skip else "")
    out = [heading, "", _retired("resnet50_layerwise.py", "resnet50-imagenet-like", partly=bool(skip)) +
           " Commands: " + ", ".join(f"`{c}`" for c in commands) + f" ({result.get('machine', '?')}).", "",
           f"| method | threads | wall | layers | peak RSS | file | slowest layers | target ({TARGET_MINUTES} min, "
           f"{TARGET_GIB} GiB) |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        minutes, gib = row["compress_s"] / 60, row["peak_rss_gib"]
        met = "met" if minutes <= TARGET_MINUTES and gib <= TARGET_GIB else "**missed**"
        slowest = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in row.get("slowest_layers", [])[:3])
        out.append(f"| {_recipe(row['recipe'])} | {row['threads']} | {minutes:.1f} min | "
                   f"{row['solve_and_capture_s'] / 60:.1f} min | {gib:.2f} GiB | {row['packed_bytes'] / 1e6:.1f} MB | "
                   f"{slowest} | {met} |")
    estimate = result.get("lobs_exact_estimate")
    if estimate and "lobs" not in skip:
        out += ["", f"L-OBS exact (OBC) mode, estimated from timed rows: {estimate['estimated_solve_hours']:.2f} h of "
                f"solves on {estimate['threads']} thread(s) (`{estimate['command']}`)."]
    return out + ["", "wall: the whole compression, calibration capture through BatchNorm correction; layers: the "
                  "per-layer capture, statistics and solves within it.", ""]


def resnet18_line(path: Path) -> list[str]:
    """layerwise_cifar10.jsonl's ResNet-18 row: one-shot L-OBS at 224x224 on random inputs, peak memory."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    row = next((r for r in rows if r.get("row") == "resnet18_224_lobs50"), None)
    if not row:
        return []
    return ["#### ResNet-18, memory stays bounded", "",
            f"L-OBS 50% one-shot, {row['images']} random-noise inputs at 224x224: {row['compress_seconds'] / 60:.1f} "
            f"min, {row['peak_rss_gib']:.2f} GiB peak resident memory. " +
            _retired("layerwise_cifar10.py", "resnet18-imagenet-like", " --resnet18"), ""]


def _recipe(recipe: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in recipe.get("params", {}).items())
    return f"{recipe['method']} ({params})" if params else recipe["method"]


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None

