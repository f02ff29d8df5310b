"""Data roots: explicit root, DEEPSHRINK_DATA search path, well-known places; helpful not-found errors."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from deepshrink.cli import main
from deepshrink.data import add_data_args, candidate_roots, dataset_from_args, get_dataset
from deepshrink.data.idx import write_idx
from deepshrink.errors import UserError


def _mnist(folder):
    folder.mkdir(parents=True)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([4, 2]))


def test_search_path_finds_named_subfolder(tmp_path, monkeypatch, private_cache):
    _mnist(tmp_path / "b" / "mnist")
    monkeypatch.setenv("DEEPSHRINK_DATA", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    ds = get_dataset("mnist", "test")
    assert ds.targets.tolist() == [4, 2] and ds.root == tmp_path / "b" / "mnist"


def test_not_found_lists_every_place_and_the_fix(tmp_path, monkeypatch, private_cache):
    monkeypatch.setenv("DEEPSHRINK_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        get_dataset("mnist", "train")
    message = str(info.value)
    for place in candidate_roots("mnist"):
        assert str(place) in message
    assert str(tmp_path / "nowhere" / "mnist") in message and "/usr/share/datasets/mnist" in message
    assert str(private_cache / "mnist") in message and str(tmp_path / "data" / "mnist") in message
    assert "--data-root" in message and "DEEPSHRINK_DATA" in message and "--download" in message


def test_explicit_root_is_the_only_place_searched(tmp_path):
    with pytest.raises(UserError) as info:
        get_dataset("fashion-mnist", "test", root=tmp_path)
    message = str(info.value)
    assert f"Searched: {tmp_path} (exists, no match)." in message and "dataset-fashion-mnist" in message


def test_unknown_names():
    with pytest.raises(UserError, match="unknown data set 'cifar11'.*cifar10"):
        get_dataset("cifar11")
    with pytest.raises(UserError, match="unknown split 'val'"):
        get_dataset("digits", "val")


def test_shared_cli_arguments(tmp_path):
    _mnist(tmp_path / "m")
    parser = argparse.ArgumentParser()
    add_data_args(parser, default="digits")
    ds = dataset_from_args(parser.parse_args(["--data", "mnist", "--data-root", str(tmp_path / "m")]), "test")
    assert len(ds) == 2
    assert len(dataset_from_args(parser.parse_args([]), "test")) == 360  # sklearn digits: 1797 - 1437


def test_cli_missing_data_exits_2_with_one_line(tmp_path, capsys):
    assert main(["data", "info", "--data", "svhn", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "svhn (train split) not found" in err and "Traceback" not in err
