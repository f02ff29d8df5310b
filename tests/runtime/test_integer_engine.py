"""The integer engine (`onnxruntime-int8`) on real data (scikit-learn digits): the codes reach ONNX
Runtime unchanged, ONNX Runtime fuses the graph into integer kernels, and the engine's outputs are
the loaded packed model's up to activation rounding."""
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper

from deepshrink.nn import CompressedConv2d, CompressedLinear
from deepshrink.runtime import get_engine
from deepshrink.runtime.qdq import activation_grid, quantizer_noise, weight_integer_form
from deepshrink.runtime.qdq_graph import build_integer_graph, export_marked
from deepshrink.runtime.qdq_rewrite import Rewrite
from int8_graph import AGREE_W4A4, AGREE_WEIGHT_ONLY, pair_sums


def _compressed_layers(model):
    return [m for m in model.modules() if isinstance(m, (CompressedConv2d, CompressedLinear))
            and m.encoded.kind != "float"]


def _logits(model, images):
    with torch.no_grad():
        return model(images)


def _same_codes_up_to_a_power_of_two(stored: np.ndarray, codes: np.ndarray) -> bool:
    """Each channel of `stored` is +-2^j times that channel of `codes` (BN folding may flip a channel's
    sign; widening multiplies its codes by a power of two and divides its scale by it)."""
    if stored.shape != codes.shape:
        return False
    for got, want in zip(stored.reshape(len(stored), -1).astype(np.int32), codes.reshape(len(codes), -1)):
        ratios = {got[i] / want[i] for i in np.flatnonzero(want)}
        if not np.array_equal(got == 0, want == 0) or len(ratios) > 1:
            return False
        ratio = abs(ratios.pop()) if ratios else 1
        if ratio != 2 ** round(np.log2(ratio)):
            return False
    return True


@pytest.mark.parametrize("fixture", ["w4a4_digits", "weight_only_digits"])
def test_no_pair_sum_exceeds_int16_where_the_cpu_adds_pairs_in_16_bits(fixture, request, digits_calibration):
    """On x86 without VNNI, MLAS's u8s8 kernels saturate a pair sum beyond 32767: the graph for such a
    CPU keeps every one inside (7-bit float-layer weights); for a VNNI CPU the float layers use all 8 bits."""
    model, _ = request.getfixturevalue(fixture)
    narrow = pair_sums(build_integer_graph(model, digits_calibration[:1], digits_calibration, saturating=True))
    wide = pair_sums(build_integer_graph(model, digits_calibration[:1], digits_calibration, saturating=False))
    assert len(narrow) == len(wide) >= 21 and max(narrow.values()) <= 32767
    assert max(wide.values()) == 2 * 255 * 127  # the float stem, 8-bit image codes x full int8 weights


def test_fused_integer_kernels_compute_what_the_graph_says_on_this_cpu(w4a4_digits, weight_only_digits, digits_test,
                                                                         digits_calibration):
    """ONNX Runtime's fused QLinearConv / QLinearAdd run the graph (built for this CPU, `pairs_saturate`)
    as its unfused float reading does: no saturated sum. Forced to full int8 weights on a CPU without
    VNNI, the fused kernels saturate and ~3-7% of the digits' predictions move."""
    images, _ = digits_test
    for model, _ in (w4a4_digits, weight_only_digits):
        graph = build_integer_graph(model, images[:1], digits_calibration).SerializeToString()
        outputs = []
        for level in (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
                      onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL):
            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = level
            session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            outputs.append(session.run(["output"], {"input": images.numpy()})[0])
        fused, unfused = outputs
        assert (fused.argmax(1) == unfused.argmax(1)).mean() >= 0.99
        assert np.abs(fused - unfused).mean() <= 0.02 * np.abs(unfused).mean()


def test_codes_reach_the_graph_unchanged(w4a4_digits, digits_calibration):
    model, _ = w4a4_digits
    graph = build_integer_graph(model, digits_calibration[:1], digits_calibration)
    int8 = [numpy_helper.to_array(t) for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    layers = _compressed_layers(model)
    assert len(layers) == 20  # ResNet-20 B less the float first conv and fc: 18 3x3 + 2 projections
    for layer in layers:
        q, _ = weight_integer_form(layer.encoded)
        assert int(q.abs().max()) <= 15  # 4-bit DoReFa: odd integers -15..15 at half the scale
        assert any(_same_codes_up_to_a_power_of_two(a, q.numpy().astype(np.int32)) for a in int8), layer


def test_trained_grids_alone_reproduce_the_packed_model(w4a4_digits, digits_test):
    """With the 8-bit calibrated points left in float, the graph is the PyTorch model: each trained
    quantizer's Q/Clip/DQ rounds where the model rounds (a rare float tie may flip one step). Run
    unoptimised: ONNX Runtime's optimiser rounds float biases to int32 at x_scale * w_scale, as the
    engine's graph does by construction."""
    model, _ = w4a4_digits
    images, _ = digits_test
    rewrite = Rewrite(export_marked(model, images[:1]))
    assert rewrite.fold_batchnorm() == 20  # the float stem's BN the exporter folds itself
    assert not [n for n in rewrite.nodes if n.op_type == "BatchNormalization"]
    probe, points = rewrite.build(ranges=None)
    assert points  # the 8-bit points exist, left in float here
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(["output"], {"input": images.numpy()})[0]
    want = _logits(model, images).numpy()
    close = np.abs(got - want).max(axis=1) <= 1e-4 * np.abs(want).max()
    assert close.mean() >= 0.95


def test_w4a4_engine_agrees_with_the_packed_model(w4a4_digits, digits_test, digits_calibration):
    model, _ = w4a4_digits
    images, labels = digits_test
    runner = get_engine("onnxruntime-int8").prepare(model, images[:1], threads=1, calibration=digits_calibration)
    got, want = runner(images), _logits(model, images)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= AGREE_W4A4
    file_top1 = (want.argmax(1) == labels).float().mean()
    assert file_top1 >= 0.85  # a model that learned the digits, so that agreement means something
    assert abs((got.argmax(1) == labels).float().mean() - file_top1) <= 0.015  # 360 images: 5 at most
    assert (got - want).abs().mean() <= 0.15 * want.abs().mean()


def test_w4a4_engine_departs_from_the_file_as_little_as_the_file_under_noise(w4a4_digits, digits_test,
                                                                            digits_calibration):
    """Each rounding the engine cannot do as PyTorch does (int32 biases, the 8-bit residual stream) flips
    a few 4-bit codes, and those flip others downstream: the engine can come as close to the file as
    copies of the file whose quantizer inputs get noise of 5% of a step, and no closer."""
    model, _ = w4a4_digits
    images, _ = digits_test
    runner = get_engine("onnxruntime-int8").prepare(model, images[:1], threads=1, calibration=digits_calibration)
    got, want = runner(images), _logits(model, images)
    copies = []
    for seed in range(4):
        with quantizer_noise(model, steps=0.05, seed=seed):
            copies.append(_logits(model, images))
    assert all((copy - want).abs().max() > 0 for copy in copies)  # the noise reaches the logits
    copy_error = np.mean([float((copy - want).abs().mean()) for copy in copies])
    copy_flips = np.mean([float((copy.argmax(1) != want.argmax(1)).sum()) for copy in copies])
    assert float((got - want).abs().mean()) <= 1.25 * copy_error
    assert float((got.argmax(1) != want.argmax(1)).sum()) <= 2 * copy_flips


def test_quantizer_noise_is_that_fraction_of_a_step_and_leaves_the_file_as_it_was(w4a4_digits, digits_test):
    model, _ = w4a4_digits
    images, _ = digits_test
    first = next(m.input_quant for m in _compressed_layers(model) if m.input_quant is not None)  # after the float stem
    step = activation_grid(first).scale
    clean, noisy = [], []
    handle = first.register_forward_pre_hook(lambda _, inputs: clean.append(inputs[0].clone()))
    want = _logits(model, images)
    handle.remove()
    with quantizer_noise(model, steps=0.05, seed=3):
        handle = first.register_forward_pre_hook(lambda _, inputs: noisy.append(inputs[0].clone()))  # after the noise
        _logits(model, images)
        handle.remove()
    error = (noisy[0] - clean[0]) / step  # (N, C, H, W) in grid steps
    assert abs(float(error.std()) - 0.05) <= 0.005 and abs(float(error.mean())) <= 0.005
    assert torch.equal(_logits(model, images), want)  # the hooks are gone


def test_weight_only_engine_with_8bit_activations_agrees(weight_only_digits, digits_test, digits_calibration):
    model, _ = weight_only_digits
    images, labels = digits_test
    assert all(m.encoded.kind == "pow2" and m.input_quant is None for m in _compressed_layers(model))
    assert len(_compressed_layers(model)) == 20
    runner = get_engine("onnxruntime-int8").prepare(model, images[:1], threads=1, calibration=digits_calibration)
    got, want = runner(images), _logits(model, images)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= AGREE_WEIGHT_ONLY
    assert abs((got.argmax(1) == labels).float().mean() - (want.argmax(1) == labels).float().mean()) <= 0.015
    assert (got - want).abs().mean() <= 0.05 * want.abs().mean()


@pytest.mark.parametrize("fixture", ["w4a4_digits", "weight_only_digits"])
def test_onnxruntime_fuses_every_conv_and_add_into_integer_kernels(fixture, request, digits_calibration, tmp_path):
    model, _ = request.getfixturevalue(fixture)
    optimized = tmp_path / "optimized.onnx"
    get_engine("onnxruntime-int8").prepare(model, digits_calibration[:1], threads=1,
                                           calibration=digits_calibration, optimized_path=str(optimized))
    ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert "Conv" not in ops and "Add" not in ops
    assert ops.count("QLinearConv") >= convs  # W4A4: a conv read at two precisions runs twice
    assert ops.count("QLinearAdd") >= 9
