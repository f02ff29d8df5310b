"""ONNX export at the real size: integer initialisers (int4 where they fit) + DequantizeLinear, PQ as Gather,
float only where an encoding has neither form (named in a warning); onnxruntime agrees with torch."""
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import encodings_for
from onnx import numpy_helper

import deepshrink
from deepshrink.nn import EncodedWeight, compress_layer, set_module
from deepshrink.packing import save
from deepshrink.packing.onnx_export import export_onnx

INTEGER_KINDS = {"binary", "ternary", "pow2", "sparse_pow2", "sparse_ternary", "uniform2", "uniform4", "uniform8",
                 "sparse_uniform4"}
GATHER_KINDS = {"pq_row", "pq_channel", "pq_subspace"}
FLOAT_KINDS = {"sparse_float", "uniform12"}  # no integer form within 8 bits, no codebook


def _ort(path, images):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images.numpy()})[0]


def _initialisers(path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


def test_every_kind_exports_in_its_form_and_runs_like_torch(every_encoding_model, images, tmp_path):
    model, kinds = every_encoding_model
    assert set(kinds.values()) == INTEGER_KINDS | GATHER_KINDS | FLOAT_KINDS
    save(model, tmp_path / "m.dsz")
    with pytest.warns(UserWarning) as caught:
        info = export_onnx(tmp_path / "m.dsz", tmp_path / "m.onnx")
    assert (info["integer_layers"], info["gather_layers"]) == (len(INTEGER_KINDS), len(GATHER_KINDS))
    floats = {name: model.get_submodule(name).weight.numel() * 4 for name, kind in kinds.items() if kind in FLOAT_KINDS}
    assert info["float_layers"] == floats
    messages = [str(w.message) for w in caught]
    assert all(any(m.startswith(f"{name}:") and f"{nbytes:,} bytes" in m for m in messages)
               for name, nbytes in floats.items())
    assert info["max_abs_diff"] <= 1e-4 * max(1.0, info["max_abs_output"])
    got = _ort(tmp_path / "m.onnx", images)  # another batch size than the export's
    with torch.no_grad():
        want = model(images).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("kind", sorted(INTEGER_KINDS - {"sparse_uniform4"} | GATHER_KINDS | FLOAT_KINDS))
def test_each_encoding_alone_agrees_with_torch(kind, images, tmp_path):
    gen = torch.Generator().manual_seed(2)
    model = deepshrink.create_model("resnet20", num_classes=10)
    layer = model.get_submodule("layer2.1.conv1")
    set_module(model, "layer2.1.conv1", compress_layer(layer, encodings_for(layer.weight.data, gen)[kind]))
    save(model.eval(), tmp_path / "m.dsz")
    with warnings.catch_warnings(record=True):
        info = export_onnx(tmp_path / "m.dsz", tmp_path / "m.onnx", verify=False)
    assert list(info["float_layers"]) == (["layer2.1.conv1"] if kind in FLOAT_KINDS else [])
    with torch.no_grad():
        want = model(images).numpy()
    np.testing.assert_allclose(_ort(tmp_path / "m.onnx", images), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_integer_weights_are_their_exact_integer_forms_in_4_or_8_bits(every_encoding_model, tmp_path):
    model, kinds = every_encoding_model
    save(model, tmp_path / "m.dsz")
    with warnings.catch_warnings(record=True):
        info = export_onnx(tmp_path / "m.dsz", tmp_path / "m.onnx", verify=False)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    types = {init.name: init.data_type for init in graph.initializer}
    arrays = _initialisers(tmp_path / "m.onnx")
    stored = [node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"]
    forms = {name: model.get_submodule(name).encoded.integer_form() for name, kind in kinds.items()
             if kind in INTEGER_KINDS}
    assert sorted(arrays[name].astype(np.int64).tobytes() for name in stored) == \
        sorted(form.q.numpy().tobytes() for form in forms.values())
    four_bit = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    ranges = {name: (min(int(f.q.min()), int(f.zero_point.min())), max(int(f.q.max()), int(f.zero_point.max())))
              for name, f in forms.items()}
    fits = [name for name, (low, high) in ranges.items() if 0 <= low and high <= 15 or -8 <= low and high <= 7]
    assert info["int4_layers"] == len(fits) == sum(types[name] in four_bit for name in stored)
    assert {types[name] for name in stored} <= four_bit | {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


def test_pq_weights_are_codebook_and_byte_codes(every_encoding_model, tmp_path):
    model, kinds = every_encoding_model
    save(model, tmp_path / "m.dsz")
    with warnings.catch_warnings(record=True):
        export_onnx(tmp_path / "m.dsz", tmp_path / "m.onnx", verify=False)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    arrays = _initialisers(tmp_path / "m.onnx")
    cast_of = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Cast"}
    tables = [cast_of[node.input[0]] for node in graph.node if node.op_type == "Gather" and node.input[0] in cast_of]
    assert len(tables) == len(GATHER_KINDS) and all(arrays[name].dtype == np.float16 for name in tables)
    codes = {name: model.get_submodule(name).encoded.codes.numpy().astype(np.uint8).tobytes()
             for name, kind in kinds.items() if kind in GATHER_KINDS}
    stored = [arrays[name].tobytes() for name in cast_of.values() if name in arrays and arrays[name].dtype == np.uint8]
    assert sorted(stored) == sorted(codes.values())


def _ldnq_resnet20(levels: int) -> torch.nn.Module:
    """ResNet-20 as L-DNQ leaves it: every conv but the first as pow2 codes, the first conv and fc float."""
    gen = torch.Generator().manual_seed(0)
    model = deepshrink.create_model("resnet20", num_classes=10, shortcut="B")
    half = (levels - 1) // 2
    for name, layer in list(model.named_modules()):
        if isinstance(layer, torch.nn.Conv2d) and name != "conv1":
            codes = torch.randint(-half, half + 1, layer.weight.shape, generator=gen).to(torch.int8)
            set_module(model, name, compress_layer(layer, EncodedWeight(
                "pow2", layer.weight.shape, codes=codes, levels=levels,
                params={"alpha": torch.rand(layer.out_channels, generator=gen) * 0.1})))
    return model.eval()


def test_ldnq_resnet20_exports_under_30_percent_of_fp32(tmp_path):
    model = _ldnq_resnet20(3)
    save(model, tmp_path / "m.dsz")
    info = export_onnx(tmp_path / "m.dsz", tmp_path / "m.onnx")
    float_model = deepshrink.create_model("resnet20", num_classes=10, shortcut="B").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(float_model, (torch.randn(1, 3, 32, 32),), str(tmp_path / "f.onnx"), dynamo=False,
                          input_names=["input"], output_names=["output"])
    assert info["int4_layers"] == info["integer_layers"] == 20 and not info["float_layers"]  # 18 + 2 downsample convs
    assert info["bytes"] <= 0.30 * (tmp_path / "f.onnx").stat().st_size
    assert info["max_abs_diff"] <= 1e-4 * max(1.0, info["max_abs_output"])


def test_below_opset_21_codes_stay_8_bit(tmp_path):
    save(_ldnq_resnet20(5), tmp_path / "m.dsz")
    info = export_onnx(tmp_path / "m.dsz", tmp_path / "m.onnx", opset=17)
    assert info["opset"] == 17 and info["int4_layers"] == 0 and info["integer_layers"] == 20
    assert info["max_abs_diff"] <= 1e-4 * max(1.0, info["max_abs_output"])


def test_activation_quantized_model_exports_and_agrees_up_to_rounding_flips(tmp_path):
    import deepshrink

    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 4, (4,), generator=gen))]
    torch.manual_seed(0)
    result = deepshrink.compress(deepshrink.create_model("resnet20", num_classes=4),
                                 {"method": "dorefa", "params": {"weight_bits": 2, "act_bits": 4},
                                  "layers": [{"pattern": "layer[23].*", "skip": True}]},
                                 train_data=data, overrides=["train.epochs=0"])
    save(result.model, tmp_path / "q.dsz")
    info = export_onnx(tmp_path / "q.dsz", tmp_path / "q.onnx")
    assert info["activation_quantized"] and info["integer_layers"] == 6
    images = torch.randn(64, 3, 32, 32, generator=gen)
    session = onnxruntime.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": images.numpy()})[0]
    with torch.no_grad():
        want = result.model(images).numpy()
    assert np.abs(got - want).max() <= 5e-2 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95


def test_a_fractional_zero_point_stays_float_with_a_warning(tmp_path):
    model = deepshrink.create_model("lenet300")
    fc2 = model.fc2
    codes = torch.randint(0, 8, fc2.weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    set_module(model, "fc2", compress_layer(fc2, EncodedWeight(
        "uniform", fc2.weight.shape, codes=codes, bits=3,
        params={"scale": torch.full((100,), 0.02), "zero_point": torch.tensor([3.3])})))
    save(model.eval(), tmp_path / "z.dsz")
    with pytest.warns(UserWarning, match=f"fc2: .* exported as float \\({300 * 100 * 4:,} bytes\\)"):
        info = export_onnx(tmp_path / "z.dsz", tmp_path / "z.onnx")
    assert info["integer_layers"] == 0 and info["float_layers"] == {"fc2": 120_000}
    assert info["max_abs_diff"] <= 1e-5 * max(1.0, info["max_abs_output"])


def test_an_export_beyond_its_tolerance_is_refused_and_leaves_no_file(tmp_path):
    from deepshrink.errors import UserError

    save(_ldnq_resnet20(3), tmp_path / "m.dsz")
    (tmp_path / "m.onnx").write_bytes(b"an earlier export")
    with pytest.raises(UserError, match="not faithful"):  # float32 rounding alone exceeds a 1e-12 tolerance
        export_onnx(tmp_path / "m.dsz", tmp_path / "m.onnx", tolerance=1e-12)
    assert (tmp_path / "m.onnx").read_bytes() == b"an earlier export"  # replaced only by a whole, verified file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dsz", "m.onnx"]
