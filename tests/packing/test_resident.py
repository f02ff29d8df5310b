"""deepshrink.load keeps codes resident: tensor bytes against the file's payload, same outputs as decoded."""
import math

import pytest
import torch

import deepshrink
from deepshrink.nn import EncodedWeight, compress_layer, decode_weights, set_module, tensor_nbytes
from deepshrink.nn.compressed import _CompressedMixin
from deepshrink.packing import save
from deepshrink.packing.format import read_container


def _payload_bytes(path) -> int:
    _, blobs, _ = read_container(path)
    return sum(blob.numel() * blob.element_size() for blob in blobs.values())


def _stream_bytes(enc: dict) -> int:
    """Bytes a layer's encoding holds in the file: code streams, mask stream and parameters."""
    total = sum(enc[key]["n"] for key in ("codes", "mask") if isinstance(enc.get(key), dict))
    sizes = {"float32": 4, "float16": 2, "bfloat16": 2}
    total += sum(math.prod(ref["s"]) * sizes[ref["b"]] for ref in (enc.get("params") or {}).values())
    return total + (_stream_bytes(enc["inner"]) if "inner" in enc else 0)


def test_every_layer_holds_at_most_its_file_bytes(every_encoding_model, tmp_path):
    """Resident codes take the file's bit width; three-symbol alphabets are base 3 (1.6 bits, under the file's 2)."""
    model, kinds = every_encoding_model
    save(model, tmp_path / "m.dsz")
    meta, _, _ = read_container(tmp_path / "m.dsz")
    loaded = deepshrink.load(tmp_path / "m.dsz")
    for name in kinds:
        layer = loaded.get_submodule(name)
        held = sum(t.numel() * t.element_size() for t in layer.resident_tensors())
        stored = _stream_bytes(meta["encoded"][f"{name}.weight"])
        if "ternary" in kinds[name]:
            assert held < stored, name
        else:
            assert held == stored, name


def test_loaded_model_holds_no_float_copy(every_encoding_model, images, tmp_path):
    model, kinds = every_encoding_model
    save(model, tmp_path / "m.dsz")
    loaded = deepshrink.load(tmp_path / "m.dsz")
    state = loaded.state_dict()
    assert not [name for name in kinds if f"{name}.weight" in state]
    layers = [m for m in loaded.modules() if isinstance(m, _CompressedMixin)]
    assert len(layers) == len(kinds) and all(layer.is_resident for layer in layers)
    float_bytes = sum(v.numel() * v.element_size() for k, v in state.items())
    assert tensor_nbytes(loaded) == float_bytes + sum(t.numel() * t.element_size()
                                                      for layer in layers for t in layer.resident_tensors())


def test_resident_outputs_equal_the_decoded_models(every_encoding_model, images, tmp_path):
    model, _ = every_encoding_model
    save(model, tmp_path / "m.dsz")
    resident, decoded = deepshrink.load(tmp_path / "m.dsz"), deepshrink.load(tmp_path / "m.dsz", decode=True)
    with torch.no_grad():
        assert torch.equal(resident(images), decoded(images))
        assert torch.equal(resident(images), model(images))


def test_decode_true_gives_trainable_float_weights(every_encoding_model, images, tmp_path):
    model, kinds = every_encoding_model
    save(model, tmp_path / "m.dsz")
    loaded = deepshrink.load(tmp_path / "m.dsz", decode=True)
    trainable = dict(loaded.named_parameters())
    for name in kinds:
        weight = trainable[f"{name}.weight"]
        assert weight.requires_grad and torch.equal(weight, model.get_submodule(name).weight)
    loaded.train()
    loss = loaded(images).logsumexp(1).mean()
    loss.backward()
    assert all(trainable[f"{name}.weight"].grad.abs().sum() > 0 for name in kinds)


def _pow2_resnet20(levels: int = 3) -> torch.nn.Module:
    """ResNet-20 with every conv but the first as 3-level pow2 codes (the L-DNQ form), fc float."""
    gen = torch.Generator().manual_seed(0)
    model = deepshrink.create_model("resnet20", num_classes=10)
    for name, layer in list(model.named_modules()):
        if isinstance(layer, torch.nn.Conv2d) and name != "conv1":
            half = (levels - 1) // 2
            codes = torch.randint(-half, half + 1, layer.weight.shape, generator=gen).to(torch.int8)
            set_module(model, name, compress_layer(layer, EncodedWeight(
                "pow2", layer.weight.shape, codes=codes, levels=levels,
                params={"alpha": torch.rand(layer.out_channels, generator=gen)})))
    return model.eval()


@pytest.mark.parametrize("levels", [3, 5])
def test_loaded_ldnq_resnet20_tensor_bytes_within_115_percent_of_payload(levels, tmp_path):
    save(_pow2_resnet20(levels), tmp_path / "m.dsz")
    loaded = deepshrink.load(tmp_path / "m.dsz")
    assert tensor_nbytes(loaded) <= 1.15 * _payload_bytes(tmp_path / "m.dsz")
    assert tensor_nbytes(decode_weights(loaded)) > 4 * _payload_bytes(tmp_path / "m.dsz")  # the float copy


def test_file_without_codes_for_a_layer_is_refused(tmp_path):
    from deepshrink.errors import PackFormatError
    from deepshrink.packing.format import build_payload, to_bytes

    meta, blobs = build_payload(_pow2_resnet20())
    del meta["encoded"]["layer1.0.conv1.weight"]
    (tmp_path / "m.dsz").write_bytes(to_bytes(meta, blobs))
    with pytest.raises(PackFormatError, match="layer1.0.conv1.weight: the file holds no codes"):
        deepshrink.load(tmp_path / "m.dsz")


def test_a_loaded_model_can_be_compressed_again_and_the_method_sees_its_weights(tmp_path):
    """L-OBS then L-DNQ in two steps: the second method writes each layer's new weights into the loaded
    model before it captures the next layer's inputs, exactly as on a float model."""
    import deepshrink

    torch.manual_seed(0)
    model = deepshrink.create_model("lenet300", num_classes=10, in_channels=1, input_size=8).eval()
    data = [(torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,)))]
    pruned = deepshrink.compress(model, "magnitude", calib_data=data, overrides=["sparsity=0.5"]).model
    deepshrink.pack(pruned, tmp_path / "pruned.dsz")
    recipe = {"method": "ldnq", "keep_first_last": False, "params": {"levels": 3}}
    from_codes = deepshrink.compress(deepshrink.load(tmp_path / "pruned.dsz"), recipe, calib_data=data).model
    from_floats = deepshrink.compress(deepshrink.load(tmp_path / "pruned.dsz", decode=True), recipe,
                                      calib_data=data).model
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(getattr(from_codes, name).weight, getattr(from_floats, name).weight), name
