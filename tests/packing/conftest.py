"""Fixtures for the packed-format tests: a ResNet-20 whose layers carry every encoding kind."""
from __future__ import annotations

import pytest
import torch

import deepshrink
from deepshrink.nn import EncodedWeight, compress_layer, pq_blocks, set_module


def _per_filter(weight):
    return weight.abs().mean(dim=tuple(range(1, weight.dim())))  # (out,)


def _pq(weight, block_size, n_centroids, n_subspaces, layout, gen):
    blocks = pq_blocks(weight, block_size, layout)  # (out, n_blocks, d)
    out, n_blocks, _ = blocks.shape
    codebook = (0.1 * torch.randn(n_subspaces, n_centroids, block_size, generator=gen)).half().float()
    codes = torch.randint(0, n_centroids, (out, n_blocks), generator=gen)
    return EncodedWeight("pq", weight.shape, codes=codes, params={"codebook": codebook}, layout=layout)


def encodings_for(weight: torch.Tensor, gen: torch.Generator) -> dict[str, EncodedWeight]:
    """One EncodedWeight of `weight`'s shape per encoding kind the format must carry."""
    shape = weight.shape
    out = shape[0]
    rand = lambda high, low=0: torch.randint(low, high, shape, generator=gen)  # noqa: E731
    ternary = rand(2, -1).to(torch.int8)
    mask = torch.rand(shape, generator=gen) > 0.5
    sparse_mask = torch.rand(shape, generator=gen) > 0.8
    variants = {
        "binary": EncodedWeight("binary", shape, codes=(weight > 0).to(torch.uint8),
                                params={"scale": _per_filter(weight)}),
        "ternary": EncodedWeight("ternary", shape, codes=ternary,
                                 params={"pos_scale": torch.tensor([0.3]), "neg_scale": torch.tensor([0.2])}),
        "pow2": EncodedWeight("pow2", shape, codes=rand(4, -3).to(torch.int8), levels=7,
                              params={"alpha": torch.tensor([0.01])}),
        "pq_row": _pq(weight, 9, 16, 1, "row", gen),
        "pq_channel": _pq(weight, 4, 8, 1, "channel", gen),
        "pq_subspace": _pq(weight, 9, 4, 2, "row", gen),
        "sparse_float": EncodedWeight("sparse", shape, mask=mask,
                                      inner=EncodedWeight("float", shape, params={"values": weight.clone()})),
        "sparse_pow2": EncodedWeight("sparse", shape, mask=sparse_mask,
                                     inner=EncodedWeight("pow2", shape, codes=rand(3, -2).to(torch.int8) * sparse_mask,
                                                         levels=5, params={"alpha": 0.05 * torch.rand(out, generator=gen)})),
        "sparse_ternary": EncodedWeight("sparse", shape, mask=mask,
                                        inner=EncodedWeight("ternary", shape, codes=ternary,
                                                            params={"pos_scale": torch.tensor([0.5]),
                                                                    "neg_scale": torch.tensor([0.4])})),
    }
    for bits in (2, 4, 8, 12):
        variants[f"uniform{bits}"] = EncodedWeight(
            "uniform", shape, codes=rand(2**bits).to(torch.uint8 if bits <= 8 else torch.int32), bits=bits,
            params={"scale": torch.rand(out, generator=gen) * 0.2 / 2**bits,
                    # 8 bits: an integer zero point per filter; otherwise DoReFa's half-integer grid centre
                    "zero_point": torch.full((out,), 128.0) if bits == 8 else torch.full((1,), (2**bits - 1) / 2)})
    return variants


@pytest.fixture(scope="session")
def every_encoding_model():
    """(model, {layer: kind}): ResNet-20 (CIFAR shape) with one encoding kind per conv of stages 1-2 + sparse fc."""
    gen = torch.Generator().manual_seed(0)
    model = deepshrink.create_model("resnet20", num_classes=10)
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and name.startswith("layer")]
    kinds = {}
    for name, kind in zip(convs, list(encodings_for(torch.zeros(16, 16, 3, 3), gen))):
        layer = model.get_submodule(name)
        set_module(model, name, compress_layer(layer, encodings_for(layer.weight.data, gen)[kind]))
        kinds[name] = kind
    fc = model.fc
    fc_mask = torch.rand(fc.weight.shape, generator=gen) > 0.3
    set_module(model, "fc", compress_layer(fc, EncodedWeight("sparse", fc.weight.shape, mask=fc_mask, inner=EncodedWeight(
        "uniform", fc.weight.shape, codes=torch.randint(0, 16, fc.weight.shape, generator=gen, dtype=torch.uint8) * fc_mask,
        bits=4, params={"scale": torch.tensor([0.05]), "zero_point": torch.tensor([0.0])}))))
    kinds["fc"] = "sparse_uniform4"
    for module in model.modules():  # non-trivial BN statistics, so a lost buffer changes the outputs
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1, generator=gen)
            module.running_var.uniform_(0.5, 1.5, generator=gen)
    return model.eval(), kinds


@pytest.fixture(scope="session")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
