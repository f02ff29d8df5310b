"""Result-history notes and tables of the retired training and packing scripts, for scripts/readme_results.py.

Their rows are suites now (`cifar10`, `resnet20-qat-step-time`, `resnet20-pack-sizes`); the files they wrote under
benchmarks/results/ stay as history, and each table of them names the script and the last commit that had it.
"""
from __future__ import annotations

from pathlib import Path

from deepshrink.bench.results import read_results

# script -> (last commit that had it: `git log -1 --format=%h -- benchmarks/SCRIPT`, the suite that replaced it)
RETIRED = {"qat_cifar10.py": ("a79a9ea", "cifar10"), "layerwise_cifar10.py": ("0ce7739", "cifar10"),
           "pack_sizes.py": ("35b2949", "resnet20-pack-sizes")}


def made_by(script: str, what: str = "", suite: str | None = None) -> str:
    """'Made by the retired `benchmarks/SCRIPT` (last at commit H; its rows are now the suite S's)'."""
    commit, replaced_by = RETIRED[script]
    suite = suite or replaced_by
    return (f"Made by the retired `benchmarks/{script}{what}` (last at commit {commit}; its rows are now "
            f"`deepshrink bench --suite {suite}`'s)")


def pack_sizes_history(results_root: Path) -> list[str]:
    """The table of benchmarks/results/pack_sizes.jsonl: packed sizes of the shared ResNet-20 per method, re-packed
    with the entropy stage and in fp16."""
    rows = read_results(results_root / "pack_sizes.jsonl")
    if not rows:
        return []
    images = sorted({r.get("test_images") for r in rows if r.get("test_images")})
    out = ["### Packed sizes of the shared ResNet-20, entropy-coded and fp16 (first measurement)", "",
           made_by("pack_sizes.py") + "; each row's settings are in `benchmarks/results/pack_sizes.jsonl`. QAT rows "
           "trained a few steps only: their top-1 is not the method's. Top-1 from the file on "
           + ", ".join(f"{n:,}" for n in images) + " test images.", "",
           "| row | encodings | file | x fp32 params | top-1 from file | entropy-coded | codes' Shannon bound "
           "| + fp16 floats |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['row']} | {', '.join(r.get('encodings') or [])} | {r['file_bytes']:,} B | "
                   f"{r['ratio_vs_fp32_params']:.2f} | {r['top1_from_file']:.2f} | {r['entropy_file_bytes']:,} B | "
                   f"{r['shannon_code_bytes']:,} B | {r['fp16_entropy_file_bytes']:,} B |")
    return out + [""]
