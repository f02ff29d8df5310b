"""vit_tiny_cifar: its shape, its cost against an independent count (about ResNet-20's), every attention
projection compressed with the patch embedding and head left float, and a packed file that a fresh process
rebuilds by the registry name."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.analysis import profile
from deepshrink.errors import UserError
from deepshrink.nn import Packable, SplitAttention
from deepshrink.packing.format import read_container

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, DEPTH, HIDDEN, TOKENS, PATCH = 128, 4, 256, 64, 4  # vit_tiny_cifar's layout
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
TINY = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "train.log_every=1000"]


def vit_macs(classes: int = 10, cin: int = 3) -> int:
    """Multiply-adds per 32x32 image from the layout: patch embedding, per block four projections, Q K^T and
    weights @ V (T x T x C each) and the MLP, then the head."""
    block = 4 * TOKENS * DIM * DIM + 2 * TOKENS * TOKENS * DIM + 2 * TOKENS * DIM * HIDDEN
    return TOKENS * DIM * cin * PATCH * PATCH + DEPTH * block + DIM * classes


def small_batches(n_batches: int = 2, batch: int = 4):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(n_batches)]


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_classifies_a_batch_of_32x32_images(pool):
    model = deepshrink.create_model("vit_tiny_cifar", pool=pool, num_classes=7).eval()
    assert model.default_input_size == (3, 32, 32)
    assert model.pos_embed.shape == (1, TOKENS + (pool == "cls"), DIM)
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="pool"):
        deepshrink.create_model("vit_tiny_cifar", pool="max")


def test_costs_about_a_resnet20_per_image():
    macs = profile(deepshrink.create_model("vit_tiny_cifar")).totals["macs"]
    assert macs == vit_macs() == 38_143_232
    resnet20 = profile(deepshrink.create_model("resnet20")).totals["macs"]  # 40,551,040
    assert 0.85 * resnet20 <= macs <= 1.15 * resnet20


def test_split_attention_keeps_the_function_and_the_cost():
    model = deepshrink.create_model("vit_tiny_cifar").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        split = deepshrink.nn.split_attention(model)
        assert (split(images) - before).abs().max().item() <= 1e-5
    assert profile(split).totals["macs"] == vit_macs()


@pytest.fixture(scope="module")
def bwn_vit():
    """vit_tiny_cifar through BWN (2 fine-tune steps of 4 images): every Linear but the head binarised."""
    torch.manual_seed(0)
    data = small_batches()
    return deepshrink.compress(deepshrink.create_model("vit_tiny_cifar"), "bwn", train_data=data,
                               overrides=TINY).model.eval()


def test_a_method_compresses_every_attention_projection_and_keeps_the_ends_float(bwn_vit):
    for block in range(DEPTH):
        attention = bwn_vit.blocks[block].attn
        assert type(attention) is SplitAttention
        for name in PROJECTIONS:
            layer = getattr(attention, name)
            assert isinstance(layer, Packable) and layer.encoded.kind != "float", f"block {block} {name} is float"
        for index in (0, 3):  # the MLP's two Linear layers
            assert isinstance(bwn_vit.blocks[block].mlp[index], Packable)
    # keep_first_last: the patch embedding and the head stay plain float layers, as a CNN's stem and classifier
    assert type(bwn_vit.patch_embed) is nn.Conv2d and type(bwn_vit.head) is nn.Linear


def test_packs_and_reloads_by_name_in_a_fresh_process(bwn_vit, tmp_path):
    deepshrink.pack(bwn_vit, tmp_path / "vit.dsz")
    assert read_container(tmp_path / "vit.dsz")[0]["arch"]["name"] == "vit_tiny_cifar"
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.save(images, tmp_path / "images.pt")
    script = textwrap.dedent(f"""
        import torch, deepshrink
        torch.set_num_threads(1)
        model = deepshrink.load({str(tmp_path / 'vit.dsz')!r})
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / 'images.pt')!r})), {str(tmp_path / 'out.pt')!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        assert (torch.load(tmp_path / "out.pt") - bwn_vit(images)).abs().max().item() <= 1e-5


def test_the_float_model_packs_with_its_attention_split_and_is_left_as_it_was(tmp_path):
    model = deepshrink.create_model("vit_tiny_cifar").eval()
    deepshrink.pack(model, tmp_path / "float.dsz")  # the benchmark's full-precision row packs it uncompressed
    assert type(model.blocks[0].attn) is nn.MultiheadAttention
    loaded = deepshrink.load(tmp_path / "float.dsz")
    assert type(loaded.blocks[0].attn) is SplitAttention
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (loaded(images) - model(images)).abs().max().item() <= 1e-5
