"""make_loader: normalised batches, reproducible shuffles/augmentation, DDP shards equal 1 process."""
from __future__ import annotations

import pytest
import torch

from deepshrink.data import DatasetMeta, TensorImageDataset, make_loader

META = DatasetMeta("toy", "train", tuple("abcd"), (0.5, 0.25, 0.125), (0.2, 0.3, 0.4), augment="cifar")


def _toy(n=40, side=32):
    images = torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    return TensorImageDataset(images, torch.arange(n) % 4, META)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_eval_batches_are_normalised_in_order():
    ds = _toy(10)
    batches = _epoch(make_loader(ds, 4, train=False))
    assert [len(y) for _, y in batches] == [4, 4, 2]  # eval keeps the last partial batch
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 3, 32, 32)
    expected = (ds.images[:4].float() / 255 - torch.tensor(META.mean).view(1, 3, 1, 1)) / torch.tensor(
        META.std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5) and y.tolist() == [0, 1, 2, 3]


def test_train_is_reproducible_and_reshuffles_per_epoch():
    ds = _toy()
    a, b = make_loader(ds, 8, train=True, seed=3), make_loader(ds, 8, train=True, seed=3)
    assert len(a) == 5
    first_a, first_b = _epoch(a), _epoch(b)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first_a, first_b))
    second = _epoch(a)  # no set_epoch: the next pass is epoch 1, shuffled differently
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(first_a, second))
    a.set_epoch(0)
    again = _epoch(a)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first_a, again))
    other_seed = _epoch(make_loader(ds, 8, train=True, seed=4))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first_a, other_seed))


def test_each_epoch_visits_every_image_once():
    ds = _toy(40)
    loader = make_loader(ds, 8, train=True, augment=False)
    loader.set_epoch(5)
    seen = torch.cat([y for _, y in loader])
    assert torch.equal(torch.bincount(seen, minlength=4), torch.bincount(ds.targets))


def test_augmentation_is_pad4_crop_and_flip():
    """Every augmented image equals its source shifted by at most 4 pixels (zeros filled), maybe mirrored."""
    ds = _toy(16)
    ds.images.copy_(torch.arange(16).view(16, 1, 1, 1).to(torch.uint8) + 100)  # image i has value 100 + i
    ds.images[:, :, 10:12, 5:7] = 250  # a marker block to locate the crop
    loader = make_loader(ds, 16, train=True, seed=0)
    x, y = next(iter(loader))
    raw = (x * torch.tensor(META.std).view(1, 3, 1, 1) + torch.tensor(META.mean).view(1, 3, 1, 1)) * 255
    raw = raw.round().to(torch.int64)
    assert x.shape == (16, 3, 32, 32)
    shifts = set()
    for img in raw:
        rows, cols = torch.nonzero(img[0] == 250, as_tuple=True)
        assert rows.numel() == 4  # the whole marker survives (it is > 4 px from the border)
        dy, left = int(rows.min()) - 10, int(cols.min())
        assert -4 <= dy <= 4 and (-4 <= left - 5 <= 4 or -4 <= (32 - 2 - left) - 5 <= 4)
        shifts.add((dy, left))
    assert len(shifts) > 4  # offsets differ from image to image
    flipped = [left > 15 for _, left in shifts]
    assert any(flipped) and not all(flipped)  # about half the images are mirrored


def test_no_augmentation_for_eval_and_augment_false():
    ds = _toy(8)
    plain = next(iter(make_loader(ds, 8, train=False)))[0]
    off = make_loader(ds, 8, train=True, augment=False)
    x, _ = next(iter(off))
    # With augment=False each train image is exactly a normalised source image (only the order changes).
    for img in x:
        assert any(torch.equal(img, p) for p in plain)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_equal_one_process(world_size):
    ds = _toy(48)
    per_rank = 4
    single = make_loader(ds, per_rank * world_size, train=True, seed=7)
    ranks = [make_loader(ds, per_rank, train=True, seed=7, rank=r, world_size=world_size)
             for r in range(world_size)]
    for loader in [single, *ranks]:
        loader.set_epoch(2)
    assert all(len(r) == len(single) for r in ranks)
    for (x, y), *parts in zip(single, *ranks):
        # Rank r holds positions r, r + W, ...: interleave the shards to get the global batch.
        xs = torch.stack([p[0] for p in parts], dim=1).flatten(0, 1)  # (B/W, W, C, H, W) -> (B, C, H, W)
        ys = torch.stack([p[1] for p in parts], dim=1).flatten()
        assert torch.equal(xs, x) and torch.equal(ys, y)


def test_training_shards_are_padded_evenly():
    ds = _toy(10)
    shards = [torch.cat([y for _, y in make_loader(ds, 2, train=True, augment=False, drop_last=False, rank=r,
                                                   world_size=4)]) for r in range(4)]
    assert [len(s) for s in shards] == [3, 3, 3, 3]  # ceil(10 / 4) each, 2 samples wrapped around


def test_evaluation_shards_hold_every_image_exactly_once():
    """Unpadded, so that evaluation can add the ranks' counts and score each test image once."""
    ds = _toy(10)
    whole = torch.cat([x for x, _ in make_loader(ds, 10, train=False)])  # (10, C, H, W)
    shards = [make_loader(ds, 2, train=False, rank=r, world_size=4) for r in range(4)]
    assert [len(shard) for shard in shards] == [2, 2, 1, 1]  # 3, 3, 2, 2 images
    for r, shard in enumerate(shards):
        assert torch.equal(torch.cat([x for x, _ in shard]), whole[r::4])  # rank r: images r, r + 4, ...


def test_bad_arguments():
    with pytest.raises(ValueError, match="augment"):
        make_loader(_toy(4), 2, train=True, augment="mixup")
    with pytest.raises(ValueError, match="rank"):
        make_loader(_toy(4), 2, train=True, rank=2, world_size=2)
    with pytest.raises(TypeError, match="deepshrink data set"):
        make_loader(torch.utils.data.TensorDataset(torch.zeros(2)), 2, train=True)


def test_loader_leaves_the_thread_setting_alone():
    before = torch.get_num_threads()
    loader = make_loader(_toy(8), 4, train=True)
    for _ in loader:
        assert torch.get_num_threads() == before  # the training step between batches gets every thread
    assert torch.get_num_threads() == before


def _lazy_toy(n=40, side=12):
    """The same kind of data set, decoded item by item from PNG bytes (as a large image folder is)."""
    import io

    from PIL import Image

    from deepshrink.data import LazyImageDataset

    images = _toy(n, side).images
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return LazyImageDataset(encoded.__getitem__, torch.arange(n) % 4, META, image_size=side)


@pytest.mark.parametrize("lazy", [False, True], ids=["in memory", "decoded per item"])
def test_resume_at_yields_the_rest_of_the_pass_unchanged(lazy):
    ds = _lazy_toy() if lazy else _toy()
    loader = make_loader(ds, 8, train=True, seed=2, num_workers=0)
    loader.set_epoch(3)
    full = _epoch(loader)
    loader.set_epoch(3)
    loader.resume_at(2)
    rng = torch.get_rng_state()
    rest = _epoch(loader)
    assert torch.equal(torch.get_rng_state(), rng)  # a pass draws nothing from the global RNG (dropout's)
    assert len(rest) == len(full) - 2
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(full[2:], rest))
    assert len(_epoch(loader)) == len(full)  # resume_at applies to one pass
    with pytest.raises(ValueError, match="batch must be in"):
        loader.resume_at(len(loader) + 1)
