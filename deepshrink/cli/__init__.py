"""The `deepshrink` command: a thin layer over the API, one module per sub-command.

Each module `deepshrink/cli/<name>.py` defines `add_parser(subparsers)` that registers its sub-command
and sets `func=run` (run(args) -> int exit status). User errors exit with status 2 and one line.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from pathlib import Path

from ..errors import UserError
from ..progress import quiet

COMMANDS = ["demo", "train", "eval", "info", "data", "compress", "recipes", "pack", "inspect", "export",
            "bench", "report", "speed"]

# One example per sub-command, shown at the end of its --help.
EXAMPLES = {
    "demo": "deepshrink demo --out runs/demo",
    "train": "deepshrink train --model lenet5 --data fashion-mnist --epochs 10 --lr 0.05 -o runs/lenet5",
    "eval": "deepshrink eval runs/ldnq/model.dsz --json",
    "info": "deepshrink info --model resnet20 --model-args shortcut=B",
    "data": "deepshrink data info --data fashion-mnist",
    "compress": "deepshrink compress --recipe ldnq-l3 --base runs/lenet5/best.pt -o runs/ldnq",
    "recipes": "deepshrink recipes --json",
    "pack": "deepshrink pack runs/lenet5/best.pt -o lenet5.dsz",
    "inspect": "deepshrink inspect runs/ldnq/model.dsz",
    "export": "deepshrink export runs/ldnq/model.dsz -o ldnq.onnx",
    "bench": "deepshrink bench --suite quick --out runs/quick",
    "report": "deepshrink report runs/quick",
    "speed": "deepshrink speed runs/ldnq/model.dsz --batch 1 64 --threads 1 2 --json",
}

# Commands with long silent parts (training, calibration, layer after layer, evaluation, packing):
# they report progress on stderr (deepshrink.progress) unless given --quiet.
REPORTS_PROGRESS = ("train", "eval", "compress", "pack", "bench")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same one-line form, exit 2
        self.print_usage(sys.stderr)
        print(f"deepshrink: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="deepshrink", description="Compress trained neural networks, and prove it.")
    parser.add_argument("--version", action="version", version=f"deepshrink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"deepshrink.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"deepshrink.cli.{name}":
                raise
            continue  # sub-command not built yet
        module.add_parser(sub)
        if name in EXAMPLES and name in sub.choices:
            sub.choices[name].epilog = f"example: {EXAMPLES[name]}"
        if name in REPORTS_PROGRESS and name in sub.choices:
            sub.choices[name].add_argument("-q", "--quiet", action="store_true",
                                           help="no progress bars or lines (results, warnings and errors still print)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with quiet(getattr(args, "quiet", False)), _one_line_warnings(args.command):
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"deepshrink {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + _resume_hint(args), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `deepshrink recipes --json | head`: the reader left; end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's own flush at exit finds no broken pipe
        return 0


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Our warnings as one line each, "deepshrink CMD: warning: ...", not Python's file:line and source line."""
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest, **kw: (
        f"deepshrink {command}: warning: {message}\n" if issubclass(category, UserWarning)
        else previous(message, category, *rest, **kw))
    try:
        yield
    finally:
        warnings.formatwarning = previous


def _resume_hint(args) -> str:
    """What `--resume` would continue from after Ctrl-C (the trainer has said where it stopped)."""
    if args.command not in ("train", "compress") or not getattr(args, "out", None):
        return ""
    last = Path(args.out) / ("train" if args.command == "compress" else "") / "last.pt"
    if not last.is_file():
        return f"; nothing was saved to resume from ({last} does not exist)"
    return f"; the same command with --resume continues from {last}"


if __name__ == "__main__":
    raise SystemExit(main())
