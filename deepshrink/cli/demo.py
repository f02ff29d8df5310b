"""`deepshrink demo`: the README's first command. Runs the `quick` suite and shows what it found."""
from __future__ import annotations

import sys

INTRO = """\
deepshrink demo: compress one small network with every method deepshrink has, and compare them.

  model  LeNet-5, trained here for a few epochs on Fashion-MNIST (54,000 clothing images; 6,000 more
         held out as the validation split every choice reads)
  rows   the full-precision model, then each method (settings in the quick suite): quantization-aware
         training (a short fine-tune), layer-wise compression (1% of the training data), pruning
  each   compressed model is packed to a real .dsz file, reloaded from it, and evaluated on the
         10,000 test images: the sizes below are files on disk, the accuracies come from those files

Results go to {out}/ (results.jsonl, report.md, pareto.png). Running the demo again resumes: rows
already finished are not recomputed. About 3 minutes on a 2-core CPU, set-up included.
"""

OUTRO = """\
How to read it: 'size' is the packed file, 'ratio' how much smaller it is than the fp32 weights,
'Δ top-1' the accuracy lost against the full-precision row; ★ marks the rows on the Pareto front
(nothing else is both smaller and more accurate). Next steps:
  deepshrink report {out}                                   this table again
  deepshrink inspect {out}/rows/<row>/model.dsz             what is inside one packed file
  deepshrink compress --method bwn --model lenet5 --data fashion-mnist --out runs/bwn
"""


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the quick benchmark (every method on LeNet-5 / Fashion-MNIST)",
                       description="Run the `quick` suite: a LeNet-5 on Fashion-MNIST compressed by every "
                                   "registered method; ends with the results table and the path of the plot.")
    p.add_argument("--out", default="runs/demo", help="results folder (default: runs/demo)")
    p.add_argument("--only", help="comma-separated methods to run (the full-precision row always runs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import load_suite, run_suite
    from .bench import _command, _log, print_table

    print(INTRO.format(out=args.out), flush=True)
    summary = run_suite(load_suite("quick"), args.out, only=args.only or None,
                        command=_command(args, "demo"), log=_log)
    print_table(args.out, summary)
    print()
    print(OUTRO.format(out=args.out))
    if summary["failed"]:
        print(f"note: {summary['failed']} row(s) failed; their errors are listed above and in "
              f"{args.out}/results.jsonl", file=sys.stderr)
    return 1 if summary["failed"] == summary["total"] else 0
