"""The validation split: held out of the training split, stratified, saved and reused."""
import torch

from deepshrink.cli import main
from deepshrink.data import get_dataset
from deepshrink.data.splits import train_val_split


def test_fashion_mnist_holds_out_6000_of_60000_stratified_and_disjoint(fashion_mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSHRINK_CACHE", str(tmp_path))
    full = get_dataset("fashion-mnist", "train")
    train, val = train_val_split(full)
    assert (len(train), len(val)) == (54_000, 6_000)
    assert val.class_counts() == [600] * 10 and train.split == "train" and val.split == "val"
    # disjoint and together the whole split: every image of the training split is in exactly one part
    both = torch.cat([train.images, val.images]).flatten(1).long()
    assert torch.equal(both.sum(0), full.images.flatten(1).long().sum(0))
    assert torch.equal(torch.cat([train.targets, val.targets]).sort().values, full.targets.sort().values)
    again_train, again_val = train_val_split(full)
    assert torch.equal(again_val.targets, val.targets) and torch.equal(again_val.images, val.images)


def test_data_info_shows_the_three_splits(fashion_mnist_root, capsys):
    assert main(["data", "info", "--data", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert "train: 54000 images" in out and "val: 6000 images" in out and "test: 10000 images" in out
