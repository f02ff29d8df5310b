"""The .dsz file: exact round trip for every encoding, real bit widths, sizes that add up, atomic writes."""
import hashlib
import json
import math
import os

import numpy as np
import pytest
import safetensors
import torch

import deepshrink
from deepshrink.encodings import encode_weight
from deepshrink.encodings.bits import encode_positions
from deepshrink.errors import UserError
from deepshrink.nn import EncodedWeight, compress_layer, set_module
from deepshrink.packing import inspect, load, save
from deepshrink.packing.payload import PayloadWriter

CODE_WIDTH = {"binary": 1, "ternary": 2}


def _code_bits(weight: EncodedWeight, kept: int | None = None) -> int:
    """Independent count of the bits a weight's codes need: width x stored codes (+ sparse index)."""
    if weight.kind == "sparse":
        mask = weight.mask.reshape(-1).numpy()
        method, width, symbols = encode_positions(mask)
        inner_kept = None if weight.inner.kind == "pq" else int(mask.sum())
        return symbols.size * width + _code_bits(weight.inner, inner_kept)
    params = sum(v.numel() * (2 if k == "codebook" else 4) for k, v in weight.params.items()
                 if not (k == "values" and kept is not None))
    if weight.kind == "float":
        return 8 * params + 32 * (kept if kept is not None else weight.numel)
    if weight.kind == "pq":
        count, width = weight.codes.numel(), math.ceil(math.log2(weight.params["codebook"].shape[1]))
    else:
        count = kept if kept is not None else weight.numel
        width = CODE_WIDTH.get(weight.kind) or weight.bits
    return count * width + 8 * params


def test_every_encoding_round_trips_exactly(every_encoding_model, images, tmp_path):
    model, kinds = every_encoding_model
    save(model, tmp_path / "m.dsz")
    loaded = load(tmp_path / "m.dsz")
    assert not loaded.training
    with torch.no_grad():
        assert (model(images) - loaded(images)).abs().max().item() <= 1e-5
    for name, kind in kinds.items():
        before, after = model.get_submodule(name).encoded, loaded.get_submodule(name).encoded
        assert after.kind == before.kind, name
        assert torch.equal(after.dequantize(), before.dequantize()), name
        if before.kind not in ("sparse", "float"):
            assert after.codes.dtype == before.codes.dtype and torch.equal(after.codes, before.codes), name


def test_codes_are_stored_at_their_real_width_and_file_matches_theory(every_encoding_model, tmp_path):
    model, kinds = every_encoding_model
    report = save(model, tmp_path / "m.dsz")
    encoded = {f"{name}.weight": model.get_submodule(name).encoded for name in kinds}
    state = model.state_dict()
    rest_bits = sum(8 * v.numel() * v.element_size() for k, v in state.items() if k not in encoded)
    theory_bytes = (sum(_code_bits(w) for w in encoded.values()) + rest_bits) / 8
    file_bytes = os.path.getsize(tmp_path / "m.dsz")
    assert abs(file_bytes - theory_bytes) <= 0.02 * theory_bytes + 4096
    assert report["totals"]["file_bytes"] == file_bytes
    assert report["totals"]["theoretical_bytes"] == pytest.approx(theory_bytes, abs=len(encoded) * 3)
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["layer1.0.conv1"]["bytes"] == 16 * 16 * 9 // 8 + 16 * 4  # 1 bit/weight + a scale per filter
    assert rows["layer1.0.conv2"]["bytes"] == 16 * 16 * 9 * 2 // 8 + 8  # 2 bits/weight + two scales
    assert rows["layer2.2.conv1"]["encoding"] == "uniform 4b"


def test_per_layer_report_adds_up_to_the_file_size(every_encoding_model, tmp_path):
    model, _ = every_encoding_model
    for options in ({}, {"entropy": True, "float_dtype": "bf16"}):
        report = save(model, tmp_path / "m.dsz", **options)
        size = os.path.getsize(tmp_path / "m.dsz")
        assert sum(row["bytes"] for row in report["layers"]) == size
        assert sum(row["share"] for row in report["layers"]) == pytest.approx(1.0)
        assert inspect(tmp_path / "m.dsz") == {**report, "path": str(tmp_path / "m.dsz")}


def test_container_is_plain_safetensors_without_pickle(every_encoding_model, tmp_path):
    save(every_encoding_model[0], tmp_path / "m.dsz")
    with safetensors.safe_open(tmp_path / "m.dsz", "pt") as handle:
        assert handle.metadata()["format"] == "deepshrink.dsz" and handle.metadata()["version"] == "1"
        assert handle.get_tensor("codes").dtype == torch.uint8


def test_fp16_halves_float_tensors_and_base3_stores_1_6_bits_per_trit(every_encoding_model, images, tmp_path):
    model, _ = every_encoding_model
    fp32 = save(model, tmp_path / "a.dsz")
    small = save(model, tmp_path / "b.dsz", float_dtype="fp16", ternary_base3=True)
    rows32 = {row["name"]: row for row in fp32["layers"]}
    rows16 = {row["name"]: row for row in small["layers"]}
    assert rows16["layer3.1.conv1"]["bytes"] * 2 == rows32["layer3.1.conv1"]["bytes"]  # a float conv
    assert rows16["layer1.0.conv2"]["bytes"] == math.ceil(16 * 16 * 9 / 5) + 8  # ternary, base 3
    loaded = load(tmp_path / "b.dsz")
    with torch.no_grad():
        want = model(images)
        assert (loaded(images) - want).abs().max() <= 0.01 * want.abs().max()


def test_entropy_stage_codes_sparse_ternary_weights_near_their_entropy(tmp_path):
    model = deepshrink.create_model("resnet20")
    gen = torch.Generator().manual_seed(0)
    layer = model.layer3[0].conv2
    codes = torch.multinomial(torch.tensor([0.05, 0.9, 0.05]), layer.weight.numel(), True, generator=gen) - 1
    weight = EncodedWeight("ternary", layer.weight.shape, codes=codes.to(torch.int8).reshape(layer.weight.shape),
                           params={"pos_scale": torch.tensor([0.1]), "neg_scale": torch.tensor([0.1])})
    set_module(model, "layer3.0.conv2", compress_layer(layer, weight))
    plain = save(model, tmp_path / "a.dsz")
    coded = save(model, tmp_path / "b.dsz", entropy=True)
    row = {r["name"]: r for r in coded["layers"]}["layer3.0.conv2"]
    counts = np.bincount(codes.numpy() + 1)
    entropy = -(counts / counts.sum() * np.log2(counts / counts.sum())).sum()
    assert row["encoding"] == "ternary 2b rans"
    assert (8 * (row["bytes"] - 8)) / layer.weight.numel() - entropy <= 0.05
    assert row["shannon_bits"] == pytest.approx(entropy * layer.weight.numel(), rel=1e-4)
    assert coded["totals"]["file_bytes"] < plain["totals"]["file_bytes"] - 6000
    assert torch.equal(load(tmp_path / "b.dsz").layer3[0].conv2.encoded.codes, weight.codes)


def test_plain_float_model_packs_and_loads(images, tmp_path):
    model = deepshrink.create_model("resnet20", num_classes=7).eval()
    report = save(model, tmp_path / "f.dsz")
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "f.dsz")(images), model(images))
    assert 0.99 < report["totals"]["ratio_vs_fp32"] <= 1.0


def test_a_zoo_model_with_modules_its_architecture_does_not_build_is_refused(tmp_path):
    # (a model without a registry name packs its traced graph: tests/packing/test_any_model.py)
    model = deepshrink.create_model("lenet5")
    model.extra = torch.nn.Tanh()
    with pytest.raises(UserError, match="'extra'.*register_packable"):
        save(model, tmp_path / "x.dsz")
    assert not list(tmp_path.iterdir())


def test_an_interrupted_write_leaves_no_partial_file(every_encoding_model, tmp_path, monkeypatch):
    target = tmp_path / "m.dsz"
    target.write_bytes(b"previous file")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save(every_encoding_model[0], target)
    assert target.read_bytes() == b"previous file"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.dsz"]  # no temporary file left behind
    monkeypatch.undo()
    (tmp_path / "m.dsz").unlink()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save(every_encoding_model[0], target)
    assert list(tmp_path.iterdir()) == []


def test_deepshrink_pack_stays_callable_after_the_subpackage_is_imported(tmp_path):
    import deepshrink.packing  # noqa: F401  (the format's subpackage must not shadow the API function)

    report = deepshrink.pack(deepshrink.create_model("lenet300"), tmp_path / "l.dsz")
    assert report["totals"]["file_bytes"] == (tmp_path / "l.dsz").stat().st_size


def _small_weights() -> dict[str, EncodedWeight]:
    """One small hand-written weight per kind (no random numbers: the bytes below depend on nothing else)."""
    codes = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 0, 1]])
    mask = torch.tensor([[True, False, False, True, False, False], [False, False, False, False, False, True]])
    return {
        "binary": EncodedWeight("binary", (2, 6), codes.to(torch.uint8), {"scale": torch.tensor([0.5, 0.25])}),
        "ternary": EncodedWeight("ternary", (2, 6), (codes - 1 + codes.flip(1)).clamp(-1, 1).to(torch.int8),
                                 {"pos_scale": torch.tensor([0.5]), "neg_scale": torch.tensor([0.25])}),
        "uniform": EncodedWeight("uniform", (2, 6), torch.arange(12).reshape(2, 6) % 8, bits=3,
                                 params={"scale": torch.tensor([0.125]), "zero_point": torch.tensor([3.5])}),
        "pow2": EncodedWeight("pow2", (2, 6), (torch.arange(12).reshape(2, 6) % 5 - 2).to(torch.int8), levels=5,
                              params={"alpha": torch.tensor([0.5, 1.0])}),
        "pq": EncodedWeight("pq", (2, 6), torch.tensor([[0, 2], [1, 0]]), layout="row",
                            params={"codebook": torch.arange(9.0).reshape(1, 3, 3) / 4}),
        "sparse_float": EncodedWeight("sparse", (2, 6), mask=mask, inner=EncodedWeight(
            "float", (2, 6), params={"values": torch.arange(12.0).reshape(2, 6) / 8})),
        "sparse_uniform": EncodedWeight("sparse", (2, 6), mask=mask, inner=EncodedWeight(
            "uniform", (2, 6), torch.arange(12).reshape(2, 6) % 4, bits=2,
            params={"scale": torch.tensor([1.0]), "zero_point": torch.tensor([0.0])})),
    }


# sha256 (first 16 hex digits) of each weight's metadata JSON as the file writes it, and its payload bytes,
# recorded from format version 1 before the encodings became classes: a change here is a format change
PINNED = {
    "binary": ("d717108d6d9d4817", "float32:0000003f0000803e|codes:d608"),
    "ternary": ("6f7ef508f4d0b4ae", "float32:0000003f0000803e|codes:586290"),
    "uniform": ("8d9c9d5168210c1c", "float32:0000003e00006040|codes:88c6fa8806"),
    "pow2": ("717c973888ed654f", "float32:0000003f0000803f|codes:8846442302"),
    "pq": ("8426ce45d5818a66", "float16:000000340038003a003c003d003e003f0040|codes:18"),
    "sparse_float": ("44cf661d339c7836", "codes:f801|float16:00000036803d"),
    "sparse_uniform": ("5dea38c0544cbb33", "codes:f8013c|float32:0000803f00000000"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_kind_writes_the_pinned_version_1_bytes(name):
    weight = _small_weights()[name]
    writer = PayloadWriter()
    meta = encode_weight(weight, writer, name, torch.float16 if name == "sparse_float" else torch.float32)
    blobs = "|".join(f"{blob}:{tensor.contiguous().view(torch.uint8).numpy().tobytes().hex()}"
                     for blob, tensor in writer.blobs().items())
    meta_hash = hashlib.sha256(json.dumps(meta, separators=(",", ":")).encode()).hexdigest()[:16]
    assert (meta_hash, blobs) == PINNED[name]
