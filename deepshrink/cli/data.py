"""`deepshrink data`: inspect a data set (`info`) or convert an image folder to LMDB (`to-lmdb`).

    deepshrink data info --data cifar10 --data-root ~/.cache/deepshrink/cifar10-jpeg --json
    deepshrink data to-lmdb ~/.cache/deepshrink/cifar10-jpeg /tmp/cifar10-lmdb
"""
from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    from ..data import add_data_args

    parser = subparsers.add_parser("data", help="inspect a data set or convert it to LMDB",
                                   description="Inspect a data set (counts per class, image shape) or convert "
                                               "an image folder into LMDB stores.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    info = actions.add_parser("info", help="counts per class, image shape and sizes of a data set")
    add_data_args(info, required=True)
    info.add_argument("--split", choices=["train", "val", "test", "all"], default="all",
                      help="train = the training split minus val; val = held out of it (10%% of each class, "
                           "seeded, saved); test (default: all three)")
    info.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    convert = actions.add_parser("to-lmdb", help="copy an image folder (train/, test/) into LMDB stores")
    convert.add_argument("src", help="image folder with train/ and test/ (or val/) class folders")
    convert.add_argument("dst", help="output folder; gets train.lmdb and test.lmdb")
    parser.set_defaults(func=run, _data_parser=parser)


def describe(dataset) -> dict:
    """A JSON-ready summary of one split: size, image shape, classes and counts per class."""
    from ..data import TensorImageDataset

    first, _ = dataset[0]
    summary = {"name": dataset.name, "split": dataset.split, "root": str(dataset.root) if dataset.root else None,
               "n": len(dataset), "num_classes": dataset.num_classes, "image_shape": list(first.shape),
               "image_size": dataset.image_size, "in_channels": dataset.in_channels,
               "mean": list(dataset.mean), "std": list(dataset.std),
               "class_counts": dict(zip(dataset.classes, dataset.class_counts())),
               "in_memory": isinstance(dataset, TensorImageDataset)}
    if isinstance(dataset, TensorImageDataset):
        summary["bytes"] = dataset.images.numel()  # uint8: one byte per value
    return summary


def run(args) -> int:
    from ..data import dataset_from_args
    from ..data.lmdb_store import write_lmdb
    from ..data.splits import train_val_split

    if args.action == "to-lmdb":
        written = write_lmdb(args.src, args.dst)
        for split, count in written.items():
            print(f"{split}: {count} images -> {args.dst}/{split}.lmdb")
        return 0
    if args.action != "info":
        args._data_parser.print_help()
        return 2
    train, val = train_val_split(dataset_from_args(args, "train"))
    every = {"train": lambda: train, "val": lambda: val, "test": lambda: dataset_from_args(args, "test")}
    splits = list(every) if args.split == "all" else [args.split]
    summaries = [describe(every[split]()) for split in splits]
    for s in summaries:
        shape = "x".join(str(d) for d in s["image_shape"])
        size = f", {s['bytes'] / 2**20:.1f} MiB in memory" if "bytes" in s else ""
        print(f"{s['name']} {s['split']}: {s['n']} images {shape}, {s['num_classes']} classes{size}"
              f" (from {s['root']})")
        print("  per class: " + ", ".join(f"{name}={count}" for name, count in s["class_counts"].items()))
    if args.json:
        print(json.dumps({"data": args.data, "splits": summaries}))
    return 0
