"""`deepshrink data info`: counts per class, image shape and sizes, as text and JSON."""
from __future__ import annotations

import json

from deepshrink.cli import main


def test_info_json_for_digits(capsys):
    assert main(["data", "info", "--data", "digits", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    train, val, test = report["splits"]  # val: 10% of each class held out of the 1,437 training images
    assert (train["n"], val["n"], test["n"]) == (1295, 142, 360) and train["image_shape"] == [1, 8, 8]
    assert sum(train["class_counts"].values()) == 1295 and train["bytes"] == 1295 * 64
    assert lines[0].startswith("digits train: 1295 images 1x8x8, 10 classes")


def test_info_real_fashion_mnist_test_split(fashion_mnist_root, capsys):
    assert main(["data", "info", "--data", "fashion-mnist", "--data-root", str(fashion_mnist_root),
                 "--split", "test", "--json"]) == 0
    (split,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["splits"]
    assert split["n"] == 10000 and split["class_counts"]["Ankle boot"] == 1000 and split["image_size"] == 28
