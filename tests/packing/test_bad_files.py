"""Bad .dsz files: each raises PackFormatError naming the tensor and the problem, never a wrong model."""
import json
import struct
import zlib

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepshrink
from deepshrink.errors import PackFormatError
from deepshrink.nn import EncodedWeight, compress_layer, set_module
from deepshrink.packing import load, save
from deepshrink.packing.format import read_container, to_bytes
from deepshrink.packing.payload import crc


def _small_model():
    """LeNet-5 with ternary, sparse pow2, uniform and pq layers (a ~10 KB file)."""
    gen = torch.Generator().manual_seed(0)
    model = deepshrink.create_model("lenet5")
    conv2, fc1, fc2, fc3 = model.conv2, model.fc1, model.fc2, model.fc3
    mask = torch.rand(fc1.weight.shape, generator=gen) > 0.8
    encodings = {
        "conv2": EncodedWeight("ternary", conv2.weight.shape,
                               codes=torch.randint(-1, 2, conv2.weight.shape, generator=gen, dtype=torch.int8),
                               params={"pos_scale": torch.tensor([0.05]), "neg_scale": torch.tensor([0.04])}),
        "fc1": EncodedWeight("sparse", fc1.weight.shape, mask=mask, inner=EncodedWeight(
            "pow2", fc1.weight.shape, codes=torch.randint(-3, 4, fc1.weight.shape, generator=gen) * mask, levels=7,
            params={"alpha": torch.tensor([0.01])})),
        "fc2": EncodedWeight("uniform", fc2.weight.shape, bits=4,
                             codes=torch.randint(0, 16, fc2.weight.shape, generator=gen, dtype=torch.uint8),
                             params={"scale": torch.full((84,), 0.01), "zero_point": torch.tensor([7.5])}),
        "fc3": EncodedWeight("pq", fc3.weight.shape, layout="row", codes=torch.randint(0, 8, (10, 21), generator=gen),
                             params={"codebook": torch.randn(1, 8, 4, generator=gen).half().float()}),
    }
    for name, weight in encodings.items():
        set_module(model, name, compress_layer(model.get_submodule(name), weight))
    return model.eval()


MODEL = _small_model()
IMAGES = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    EXPECTED = MODEL(IMAGES)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "good.dsz"
    save(MODEL, path)
    return path.read_bytes()


def _rewrite(path, data, edit=None, header=None):
    """Write a copy of `data` whose metadata went through `edit(meta, blobs)`, checksums recomputed."""
    path.write_bytes(data)
    meta, blobs, _ = read_container(path)
    if edit:
        edit(meta, blobs)
    if header is None:
        path.write_bytes(to_bytes(meta, blobs))
        return path
    packed_meta = zlib.compress(json.dumps(meta).encode())
    blobs["__meta__"] = torch.frombuffer(bytearray(packed_meta), dtype=torch.uint8)
    path.write_bytes(safetensors.torch.save(blobs, metadata={**header, "meta_crc32": str(crc(packed_meta))}))
    return path


def _codes_offset(data: bytes) -> int:
    """File offset of the first byte of the 'codes' blob."""
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    return 8 + header_len + header["codes"]["data_offsets"][0]


def test_the_good_file_loads_to_the_same_outputs(packed, tmp_path):
    (tmp_path / "m.dsz").write_bytes(packed)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m.dsz")(IMAGES), EXPECTED)


def test_truncated_file(packed, tmp_path):
    for keep in (4, 100, len(packed) - 1):
        (tmp_path / "t.dsz").write_bytes(packed[:keep])
        with pytest.raises(PackFormatError, match="truncated"):
            load(tmp_path / "t.dsz")


def test_a_flipped_bit_in_a_code_stream_names_the_tensor(packed, tmp_path):
    data = bytearray(packed)
    data[_codes_offset(packed)] ^= 0x04  # first byte of the first stream: conv2's ternary codes
    (tmp_path / "f.dsz").write_bytes(bytes(data))
    with pytest.raises(PackFormatError, match=r"conv2\.weight codes: checksum mismatch"):
        load(tmp_path / "f.dsz")


def test_wrong_version(packed, tmp_path):
    path = _rewrite(tmp_path / "v.dsz", packed, header={"format": "deepshrink.dsz", "version": "2"})
    with pytest.raises(PackFormatError, match="version '2' is not supported; this deepshrink reads version 1"):
        load(path)


def test_shapes_not_matching_the_architecture(packed, tmp_path):
    path = _rewrite(tmp_path / "s.dsz", packed, lambda meta, _: meta["arch"]["kwargs"].update(num_classes=11))
    with pytest.raises(PackFormatError, match=r"fc3\.(weight|bias): shape \[10(, 84)?\] does not match the architecture's \[11"):
        load(path)


def _set(key, field, value):
    def edit(meta, _):
        target = meta["encoded"][key]
        for part in field[:-1]:
            target = target[part]
        target[field[-1]] = value
    return edit


@pytest.mark.parametrize("key, field, value, message", [
    ("conv2.weight", ["kind"], "quaternary", r"conv2\.weight: unknown encoding 'quaternary'"),
    ("fc2.weight", ["bits"], 0, r"fc2\.weight bits: expected an integer in 1\.\.16, found 0"),
    ("fc2.weight", ["bits"], 5, r"fc2\.weight codes: code width 4 bits, expected 5"),
    ("fc1.weight", ["inner", "levels"], 5, r"fc1\.weight codes: code 6 is beyond the 5 allowed values"),
    ("fc1.weight", ["inner", "levels"], 4, r"fc1\.weight: pow2 levels must be odd"),
    ("fc1.weight", ["index"], "zigzag", r"fc1\.weight: sparse index must be 'bitmap' or 'delta'"),
    ("fc3.weight", ["layout"], "diagonal", r"fc3\.weight: pq layout must be 'row' or 'channel'"),
    ("fc3.weight", ["codes", "count"], 10**9, r"fc3\.weight codes: holds 1000000000 codes, expected 210"),
    ("fc3.weight", ["codes", "codec"], "lzma", r"fc3\.weight codes: unknown codec 'lzma'"),
    ("fc2.weight", ["params", "scale", "s"], [83], r"fc2\.weight parameter 'scale': checksum mismatch"),
    ("fc2.weight", ["params", "scale", "o"], 10**9, r"fc2\.weight parameter 'scale' offset: expected an integer"),
    ("conv2.weight", ["shape"], [16, 6, 5, "5"], r"conv2\.weight shape: expected an integer"),
])
def test_metadata_out_of_range(packed, tmp_path, key, field, value, message):
    path = _rewrite(tmp_path / "m.dsz", packed, _set(key, field, value))
    with pytest.raises(PackFormatError, match=message):
        load(path)


def test_codes_beyond_their_range_in_the_payload(packed, tmp_path):
    def edit(meta, blobs):  # every 2-bit ternary code := 3, checksum made consistent
        ref = meta["encoded"]["conv2.weight"]["codes"]
        blobs["codes"][ref["o"]:ref["o"] + ref["n"]] = 0xFF
        ref["c"] = crc(blobs["codes"][ref["o"]:ref["o"] + ref["n"]].numpy())
    with pytest.raises(PackFormatError, match=r"conv2\.weight codes: code 3 is beyond the 3 allowed values"):
        load(_rewrite(tmp_path / "r.dsz", packed, edit))


def test_missing_state_and_unknown_module_type(packed, tmp_path):
    path = _rewrite(tmp_path / "a.dsz", packed, lambda meta, _: meta["tensors"].pop("fc1.bias"))
    with pytest.raises(PackFormatError, match=r"missing \['fc1\.bias'\]"):
        load(path)
    path = _rewrite(tmp_path / "b.dsz", packed, lambda meta, _: meta["modules"][0].update(type="nope"))
    with pytest.raises(PackFormatError, match=r"module 'conv2': cannot rebuild 'nope'"):
        load(path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_raises_or_loads_the_same_model(packed, tmp_path, data):
    corrupt = bytearray(packed)
    if data.draw(st.booleans(), label="truncate"):
        corrupt = corrupt[:data.draw(st.integers(0, len(packed) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            where = data.draw(st.integers(0, len(packed) - 1), label="offset")
            corrupt[where] ^= data.draw(st.integers(1, 255), label="xor")
    path = tmp_path / "c.dsz"
    path.write_bytes(bytes(corrupt))
    try:
        model = load(path)
    except PackFormatError as exc:
        assert str(path) in str(exc)
        return
    with torch.no_grad():  # a change the format does not depend on (e.g. JSON whitespace): same model
        assert torch.equal(model(IMAGES), EXPECTED)


def test_a_blob_whose_dtype_was_changed_in_the_header_is_refused(packed, tmp_path):
    header_len = struct.unpack("<Q", packed[:8])[0]
    header = packed[8:8 + header_len].replace(b'"float32":{"dtype":"F32"', b'"float32":{"dtype":"I32"')
    assert header != packed[8:8 + header_len]
    (tmp_path / "d.dsz").write_bytes(packed[:8 + header_len].replace(packed[8:8 + header_len], header)
                                     + packed[8 + header_len:])
    with pytest.raises(PackFormatError, match="blob 'float32' is stored as torch.int32"):
        load(tmp_path / "d.dsz")


def test_inspect_verifies_every_checksum_unless_told_not_to(packed, tmp_path, capsys):
    from deepshrink.cli import main

    data = bytearray(packed)
    data[_codes_offset(packed)] ^= 0x04
    (tmp_path / "f.dsz").write_bytes(bytes(data))
    assert main(["inspect", str(tmp_path / "f.dsz")]) == 2
    assert "conv2.weight codes: checksum mismatch" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "f.dsz"), "--no-verify"]) == 0  # the size report alone


@pytest.mark.parametrize("content, what", [
    (b"PK\x03\x04" + bytes(100), "a zip archive"),
    (b"\x80\x02}q\x00." + bytes(20), "a Python pickle"),
    (b"this is a README, not a model\n" * 3, "a text file"),
    (b"", "empty"),
])
def test_a_file_that_is_not_a_dsz_is_named(tmp_path, content, what):
    (tmp_path / "x.dsz").write_bytes(content)
    with pytest.raises(PackFormatError, match=f"is not a .dsz file: it is {what}"):
        read_container(tmp_path / "x.dsz")
