"""The data flags every CLI command shares: `--data NAME`, `--data-root DIR`, `--download`.

Example (inside a sub-command's `add_parser`)::

    add_data_args(parser, default="cifar10")
    ...
    test = dataset_from_args(args, "test")
"""
from __future__ import annotations

import argparse


def add_data_args(parser: argparse.ArgumentParser, default: str | None = None, required: bool = False) -> None:
    """Add `--data`, `--data-root` and `--download` to `parser`."""
    from .datasets import list_datasets

    parser.add_argument("--data", default=default, required=required and default is None, metavar="NAME",
                        help=f"data set: {', '.join(list_datasets())}" + (f" (default: {default})" if default else ""))
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="folder holding the data set (default: search $DEEPSHRINK_DATA, "
                             "/usr/share/datasets, ~/.cache/deepshrink, ./data)")
    parser.add_argument("--download", action="store_true",
                        help="download the official files (checksums verified) when not found")


def dataset_from_args(args: argparse.Namespace, split: str, **options):
    """`get_dataset(args.data, split, root=args.data_root, download=args.download, **options)`."""
    from ..errors import UserError
    from .datasets import get_dataset

    if not getattr(args, "data", None):
        raise UserError("no data set given; pass --data NAME (e.g. --data fashion-mnist)")
    return get_dataset(args.data, split, root=getattr(args, "data_root", None),
                       download=bool(getattr(args, "download", False)), **options)
