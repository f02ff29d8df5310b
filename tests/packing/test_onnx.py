"""ONNX export: uniform <= 8-bit weights as uint8 + DequantizeLinear; onnxruntime agrees with torch."""
import numpy as np
import onnx
import onnxruntime
import torch
from onnx import numpy_helper

from deepshrink.packing import save
from deepshrink.packing.onnx_export import export_onnx


def test_export_runs_in_onnxruntime_like_the_torch_model(every_encoding_model, images, tmp_path):
    model, kinds = every_encoding_model
    save(model, tmp_path / "m.dsz")
    info = export_onnx(tmp_path / "m.dsz", tmp_path / "m.onnx")
    assert info["qdq_layers"] == sum(kind in ("uniform2", "uniform4", "uniform8") for kind in kinds.values()) == 3
    assert info["max_abs_diff"] <= 1e-4 * max(1.0, info["max_abs_output"])
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": images.numpy()})[0]  # another batch size than the export's
    with torch.no_grad():
        want = model(images).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_quantized_weights_are_stored_as_their_uint8_codes(every_encoding_model, tmp_path):
    model, kinds = every_encoding_model
    save(model, tmp_path / "m.dsz")
    export_onnx(tmp_path / "m.dsz", tmp_path / "m.onnx", verify=False)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    constants = {node.output[0]: numpy_helper.to_array(node.attribute[0].t)
                 for node in graph.node if node.op_type == "Constant"}
    constants.update({init.name: numpy_helper.to_array(init) for init in graph.initializer})
    dequantized = [constants[node.input[0]] for node in graph.node if node.op_type == "DequantizeLinear"]
    # 2 and 4 bits have a half-integer zero point: stored as 2 x codes (scale / 2); 8 bits as the codes
    codes = {name: model.get_submodule(name).encoded.codes.numpy() * (1 if kind == "uniform8" else 2)
             for name, kind in kinds.items() if kind in ("uniform2", "uniform4", "uniform8")}
    assert all(array.dtype == np.uint8 for array in dequantized)
    assert sorted(a.tobytes() for a in dequantized) == sorted(c.astype(np.uint8).tobytes() for c in codes.values())
    assert not [node for node in graph.node if node.op_type == "Sub"]  # every weight exact, no offset needed


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
    assert info["activation_quantized"] and info["qdq_layers"] == 6
    images = torch.randn(64, 3, 32, 32, generator=gen)
    session = onnxruntime.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": images.numpy()})[0]
    with torch.no_grad():
        want = result.model(images).numpy()
    assert np.abs(got - want).max() <= 5e-2 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95


def test_a_fractional_zero_point_becomes_dequantize_minus_offset(tmp_path):
    import deepshrink
    from deepshrink.nn import EncodedWeight, compress_layer, set_module

    model = deepshrink.create_model("lenet300")
    fc2 = model.fc2
    codes = torch.randint(0, 8, fc2.weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    set_module(model, "fc2", compress_layer(fc2, EncodedWeight(
        "uniform", fc2.weight.shape, codes=codes, bits=3,
        params={"scale": torch.full((100,), 0.02), "zero_point": torch.tensor([3.3])})))
    save(model.eval(), tmp_path / "z.dsz")
    info = export_onnx(tmp_path / "z.dsz", tmp_path / "z.onnx")
    assert info["qdq_layers"] == 1 and info["max_abs_diff"] <= 1e-5 * max(1.0, info["max_abs_output"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "z.onnx")).graph.node]
    assert ops.count("DequantizeLinear") == 1 and ops.count("Sub") == 1
