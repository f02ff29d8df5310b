"""LMDB store of encoded images: `deepshrink data to-lmdb` copies a folder byte for byte."""
from __future__ import annotations

import lmdb
import numpy as np
import torch
from PIL import Image

from deepshrink.cli import main
from deepshrink.data import LazyImageDataset, get_dataset


def _folder(root, size=(8, 8), per_class=2):
    for split in ("train", "test"):
        for c, value in (("cat", 30), ("dog", 200)):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((*size, 3), value + i, dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_to_lmdb_round_trip_matches_folder(tmp_path, private_cache, capsys):
    _folder(tmp_path / "src")
    assert main(["data", "to-lmdb", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    assert "train: 4 images" in capsys.readouterr().out
    # The store holds the original PNG bytes, not a re-encoding.
    env = lmdb.open(str(tmp_path / "dst/test.lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"%09d" % 2) == (tmp_path / "src/test/dog/0.png").read_bytes()
    env.close()
    from_lmdb = get_dataset("lmdb", "test", root=tmp_path / "dst")
    from_folder = get_dataset("imagefolder", "test", root=tmp_path / "src")
    assert from_lmdb.classes == ["cat", "dog"] and from_lmdb.targets.tolist() == [0, 0, 1, 1]
    assert torch.equal(from_lmdb.images, from_folder.images)


def test_lmdb_lazy_items(tmp_path, private_cache):
    _folder(tmp_path / "src", size=(140, 150), per_class=1)
    main(["data", "to-lmdb", str(tmp_path / "src"), str(tmp_path / "dst")])
    ds = get_dataset("lmdb", "train", root=tmp_path / "dst")
    assert isinstance(ds, LazyImageDataset) and len(ds) == 2
    image, label = ds[1]
    assert image.shape == (3, 140, 150) and label == 1 and int(image[0, 0, 0]) == 200
