"""HISTORY.md tables of the method studies' result files, made by scripts since removed (FBS, Co-Prune,
Meta-Quant, LSQ's initialisation). Their successors are bench suites (`fbs-cifar10`,
`coprune-cifar10-inverted`, `metaquant-fmnist`, `metaquant-fmnist-bn`, `lsq-act-init`), whose result folders
the history and README show as any suite's; these files stay as the record of what the scripts measured.

    from readme_studies import study_tables     # loaded by scripts/readme_results.py from its own folder
"""
from __future__ import annotations

import json
from pathlib import Path

# script -> (the last commit that had it, the suite that replaced it)
REMOVED = {"fbs_cifar10.py": ("e4fa60b", "fbs-cifar10"),
           "coprune_cifar10_inverted.py": ("4918bef", "coprune-cifar10-inverted"),
           "metaquant_fmnist.py": ("b96c7b1", "metaquant-fmnist, metaquant-fmnist-bn"),
           "lsq_act_init.py": ("f461729", "lsq-act-init")}


def made_by(script: str) -> str:
    """The sentence naming a removed script, its last commit and its successor suite."""
    commit, suite = REMOVED[script]
    return (f"Made by `benchmarks/{script}`, since removed (last in commit {commit}; its successor is the suite "
            f"`{suite}`).")


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value, fmt: str = ".2f") -> str:
    return "" if value is None else format(value, fmt)


def study_tables(results_root: Path) -> list[str]:
    """FBS (fbs_cifar10*.json, fbs_latency.json), Co-Prune, Meta-Quant and LSQ-init result files as tables."""
    return (fbs_tables(results_root) + coprune_table(results_root) + metaquant_table(results_root)
            + lsq_init_table(results_root))


def fbs_tables(results_root: Path) -> list[str]:
    """One row per fine-tuned FBS run against its targets, then one line per latency-only run."""
    out = []
    fbs = [(p, _json(p)) for p in sorted(results_root.glob("fbs_*.json"))]
    trained = [(p, r) for p, r in fbs if r and "fbs_top1" in r]
    if trained:
        out += ["### FBS on the shared ResNet-20 (CIFAR-10 JPEG), keep ratio 0.5", "",
                made_by("fbs_cifar10.py") + " Each row is one run (its command is in the file); targets: drop "
                "<= 2.0, MACs >= 2x fewer, batch-1 latency >= 1.4x lower than the dense model (1 thread).", "",
                "| file | epochs | lr | distill | top-1 | drop | MACs ratio | latency x vs dense | targets met |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for path, r in trained:
            tune, speed = r["fine_tune"], r.get("latency_speedup", {})
            met = ", ".join(f"{k}: {'met' if v else '**missed**'}" for k, v in r["targets"].items())
            out.append(f"| {path.name} | {_num(tune['epochs'], 'g')} | {_num(tune['lr'], 'g')} | "
                       f"{_num(tune.get('distill', 0), 'g')} | {_num(r['fbs_top1'])} | {_num(r['top1_drop'])} | "
                       f"{_num(r['macs_per_image']['ratio'])} | {_num(speed.get('vs_dense'))} | {met} |")
        out.append("")
    for path, r in ((p, r) for p, r in fbs if r and "fbs_top1" not in r and "latency_speedup" in r):
        ms = ", ".join(f"{k} {v:.3f}" for k, v in r["batch1_latency_ms_1thread"].items())
        out += [f"Latency only (`{path.name}`, {r.get('fbs_model', '')}): batch-1 ms, 1 thread: {ms}; "
                "speedups: " + ", ".join(f"{k} {v:.2f}x" for k, v in r["latency_speedup"].items()) + ".", ""]
    return out


def coprune_table(results_root: Path) -> list[str]:
    """coprune_cifar10_inverted.json: target top-1 of each pruned variant and reference."""
    co = _json(results_root / "coprune_cifar10_inverted.json")
    if not co:
        return []
    out = ["### Co-Prune: CIFAR-10 -> colour-inverted CIFAR-10", "",
           f"{made_by('coprune_cifar10_inverted.py')} `{co['command']}`; {co['domain_pair']}; keep ratio "
           f"{co['keep_ratio']}.", "", "| model | target top-1 (mean over seeds) |", "|---|---:|"]
    for name, value in co["results_top1"].items():
        out.append(f"| {name.replace('_', ' ')} | {_num(value.get('top1_mean', value.get('top1')))} |")
    return out + ["", f"Co-Prune minus target-only magnitude pruning: {co['coprune_minus_target_only']:+.2f} points.", ""]


def metaquant_table(results_root: Path) -> list[str]:
    """metaquant_*.json: final top-1 of every seed of every variant (diverged runs named)."""
    meta = [(p, _json(p)) for p in sorted(results_root.glob("metaquant_*.json"))]
    if not meta:
        return []
    out = ["### Meta-Quant against the straight-through estimator (LeNet-5, Fashion-MNIST)", "",
           made_by("metaquant_fmnist.py"), "",
           "| file | float top-1 | variant | final top-1 per seed | diverged |", "|---|---:|---|---|---:|"]
    for path, m in meta:
        for name, v in m["results"].items():
            finals = ", ".join("diverged" if r.get("final_top1") is None else f"{r['final_top1']:.2f}"
                               for r in v["runs"])
            out.append(f"| {path.name} | {_num(m['float_top1'])} | {name} | {finals} | {v['diverged_runs']} |")
    return out + ["", "Commands: " + "; ".join(f"`{m['command']}`" for _, m in meta) + ".", ""]


def lsq_init_table(results_root: Path) -> list[str]:
    """lsq_act_init.json: train-mode-BN top-1 of untrained LSQ quantizers, one setting per row."""
    report = _json(results_root / "lsq_act_init.json")
    if not report:
        return []
    out = ["### LSQ before training: the paper's step init against the least-error activation step", "",
           f"{made_by('lsq_act_init.py')} `{report['command']}`: {report['what']} ({report['test_images']:,} test "
           "images).", "", "| weight bits | activation bits | act_init | top-1, train-mode BN |", "|---:|---:|---|---:|"]
    for row in report["rows"]:
        out.append(f"| {row['weight_bits']} | {row['act_bits']} | {row['act_init']} | {_num(row['top1_train_bn'])} |")
    return out + [""]
