"""`deepshrink inspect`: what is inside a `.dsz` file, per layer.

    deepshrink inspect model.dsz          # encoding, bits per weight, bytes, share; totals; ratio vs fp32
    deepshrink inspect model.dsz --json
"""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer encoding and size of a packed .dsz file",
                       description="Show each layer's encoding, bits per weight, bytes and share of FILE.dsz, "
                                   "the totals and the ratio against fp32.")
    p.add_argument("file", help="a packed .dsz file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking every payload checksum and rebuilding the model (faster on large files)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..packing import format_report, inspect

    report = inspect(args.file)
    if not args.no_verify:  # every payload checksum and the model's rebuild, as `deepshrink eval` checks them
        from ..api import load

        load(args.file)
    print(json.dumps(report) if args.json else format_report(report))
    return 0
