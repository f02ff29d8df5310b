"""One conformance test over every registered QAT method, plus recipe overrides and bad-recipe errors."""
import copy
import io

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.config import load_recipe, select_layers
from deepshrink.errors import UserError
from deepshrink.methods import CompressContext
from deepshrink.nn import CompressedConv2d, CompressedLinear
from deepshrink.quant.act_quant import XNORActivation
from deepshrink.registry import METHODS

QAT_METHODS = [name for name in deepshrink.list_methods() if METHODS.get(name).handler_cls.kind == "qat"]
TINY_TRAIN = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 8, "lr": 0.01, "log_every": 1000}


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


def tiny_data(n_batches=2, batch=8):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, 8, 8, generator=gen), torch.randint(0, 4, (batch,), generator=gen))
            for _ in range(n_batches)]


def run_handler(name, model, data, epochs=1, params=None):
    recipe = load_recipe({"method": name, "params": params or {}, "train": {**TINY_TRAIN, "epochs": epochs}})
    handler = METHODS.get(name).handler_cls(recipe, select_layers(model, recipe))
    model = handler.compress(model, CompressContext(train_data=data, train=recipe.train))
    return handler, model


def test_every_qat_method_is_conformance_tested():
    assert {"bwn", "xnor", "twn", "ttq", "dorefa", "lsq", "pact"} <= set(QAT_METHODS)


@pytest.mark.parametrize("name", QAT_METHODS)
def test_qat_method_conformance(name):
    data = tiny_data()
    x = data[0][0]
    # applies through the public entry point and converts to codes within their range
    result = deepshrink.compress(tiny_model(), name, train_data=data, overrides=[
        f"train.{k}={v}" for k, v in TINY_TRAIN.items()])
    compressed = [m for m in result.model.modules() if isinstance(m, (CompressedConv2d, CompressedLinear))]
    assert len(compressed) == 3  # conv2, conv3, fc1; first conv and last fc stay float
    for layer in compressed:
        low, high = layer.encoded.code_range()
        assert int(layer.encoded.codes.min()) >= low and int(layer.encoded.codes.max()) <= high
        assert layer.weight_bits <= 16 and hasattr(layer, "act_bits")
    assert torch.isfinite(result.model(x)).all()

    handler, qmodel = run_handler(name, tiny_model(), data)
    qlayers = [qmodel.get_submodule(n) for n in handler.layer_configs]
    # forward without NaN; backward reaches every latent weight
    qmodel.train()
    out = qmodel(x)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, data[0][1]).backward()
    for layer in qlayers:
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    # state_dict round trip into a freshly prepared (untrained) model
    qmodel.eval()
    buffer = io.BytesIO()
    torch.save(qmodel.state_dict(), buffer)
    buffer.seek(0)
    _, fresh = run_handler(name, tiny_model(), data, epochs=0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    with torch.no_grad():
        expected = qmodel(x)
        assert torch.allclose(fresh(x), expected, atol=1e-6)
        # convert reproduces the eval-mode quantized model
        converted = handler.convert(copy.deepcopy(qmodel)).eval()
        assert torch.allclose(converted(x), expected, atol=1e-5)


@pytest.mark.parametrize("name,max_levels", [("bwn", 2), ("xnor", 2), ("twn", 3), ("ttq", 3)])
def test_low_bit_weights_have_few_levels(name, max_levels):
    handler, qmodel = run_handler(name, tiny_model(), tiny_data(), epochs=0)
    converted = handler.convert(qmodel)
    for layer in converted.modules():
        if isinstance(layer, (CompressedConv2d, CompressedLinear)):
            for row in layer.weight.reshape(layer.weight.shape[0], -1):  # per output filter
                assert len(torch.unique(row)) <= max_levels


def test_recipe_override_gives_layer3_four_bits():
    model = deepshrink.create_model("resnet20", shortcut="B")
    recipe = load_recipe({"method": "dorefa", "params": {"weight_bits": 2, "act_bits": 2},
                          "layers": [{"pattern": "layer3.*", "params": {"weight_bits": 4}}]})
    handler = METHODS.get("dorefa").handler_cls(recipe, select_layers(model, recipe))
    handler.prepare(model)
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear  # kept full precision
    bits = {name: m.weight_bits for name, m in model.named_modules() if hasattr(m, "weight_bits")}
    assert bits and all(b == (4 if n.startswith("layer3.") else 2) for n, b in bits.items())
    assert model.layer3[0].conv1.act_bits == 2


@pytest.mark.parametrize("bad", [0, 33, -1, 1.5, "4"])
def test_bad_bits_are_refused_with_the_allowed_range(bad):
    with pytest.raises(UserError, match=r"weight_bits must be an integer in 1\.\.16 or 32"):
        load_recipe({"method": "dorefa", "params": {"weight_bits": bad}})


def test_bad_recipes_name_the_problem():
    with pytest.raises(UserError, match="choose one of: .*bwn.*dorefa"):
        load_recipe({"method": "dorefaa"})
    with pytest.raises(UserError, match=r"unknown key\(s\) \['bitz'\]"):
        load_recipe({"method": "lsq", "params": {"bitz": 2}})
    with pytest.raises(UserError, match=r"lsq: weight_bits must be an integer in 2\.\.16"):
        load_recipe("lsq-w2a2", overrides=["weight_bits=1"])
    with pytest.raises(UserError, match="lsq: act_init must be one of paper, mse; got 'msa'"):
        load_recipe({"method": "lsq", "params": {"act_init": "msa"}})
    with pytest.raises(UserError, match=r"ttq: threshold must be a number in \(0.0, 1.0\)"):
        load_recipe({"method": "ttq", "params": {"threshold": 1.5}})
    with pytest.raises(UserError, match="pact: act_bits must be an integer in 1..16; got 32"):
        load_recipe({"method": "pact", "params": {"act_bits": 32}})


def test_lsq_act_init_reaches_every_activation_quantizer():
    from deepshrink.quant import LSQActivation

    handler, model = run_handler("lsq", tiny_model(), tiny_data(), epochs=0, params={"act_init": "mse"})
    acts = [m for m in model.modules() if isinstance(m, LSQActivation)]
    assert acts and all(a.init == "mse" and bool(a.initialized) for a in acts)


def test_ttq_scale_lr_steps_the_scales_alone_at_their_own_rate():
    """One SGD step from the same start: W_p/W_n move by scale_lr * gradient (twice the rate, twice the
    move), the latent weights by train.lr whatever scale_lr is."""
    def one_step(scale_lr):
        model = tiny_model()
        recipe = load_recipe({"method": "ttq", "params": {"scale_lr": scale_lr},
                              "train": {**TINY_TRAIN, "max_steps_per_epoch": 1, "weight_decay": 0.0}})
        handler = METHODS.get("ttq").handler_cls(recipe, select_layers(model, recipe))
        start = copy.deepcopy(handler.prepare(copy.deepcopy(model)))
        trained = handler.compress(model, CompressContext(train_data=tiny_data(1), train=recipe.train))
        return start.state_dict(), trained.state_dict()

    (start, small), (_, large) = one_step(1e-3), one_step(2e-3)
    scale_keys = [k for k in start if k.endswith((".w_p", ".w_n"))]
    latent_keys = [k for k in start if k.endswith(".weight") and k.rsplit(".", 1)[0] + ".weight_quant.w_p" in start]
    assert scale_keys and latent_keys
    for key in scale_keys:
        moved = small[key] - start[key]
        assert moved.abs().item() > 0
        assert torch.allclose(large[key] - start[key], 2 * moved, rtol=1e-4)
    for key in latent_keys:
        assert not torch.equal(small[key], start[key])
        assert torch.allclose(large[key], small[key], atol=1e-7)
    with pytest.raises(UserError, match=r"ttq: scale_lr must be a number in \(0.0, 10.0\)"):
        load_recipe({"method": "ttq", "params": {"scale_lr": -1}})


@pytest.mark.parametrize("name", QAT_METHODS)
def test_packed_file_reproduces_the_converted_model(name, tmp_path):
    from deepshrink.api import load, pack

    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", shortcut="B", num_classes=4)
    x = torch.randn(4, 3, 16, 16)
    handler, qmodel = run_handler(name, model, [(x, torch.zeros(4, dtype=torch.long))], epochs=0)
    converted = handler.convert(qmodel).eval()
    pack(converted, tmp_path / "m.dsz")
    loaded = load(tmp_path / "m.dsz").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), converted(x), atol=1e-5)


def test_calibration_sets_pact_alpha_from_batch_normalised_activations_and_keeps_bn_statistics():
    """Fine-tuning a trained model: DoReFa's weights are ~10x the float ones, so old running statistics
    would inflate activations ~10x; alpha must come from the activations the model trains on
    (batch-statistic BN), and calibration must leave every BN statistic as it was."""
    from deepshrink.quant import calibrate
    from deepshrink.quant.act_quant import PACTActivation

    data = tiny_data()
    recipe = load_recipe({"method": "pact"})
    model = tiny_model()
    handler = METHODS.get("pact").handler_cls(recipe, select_layers(model, recipe))
    model = handler.prepare(model).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_var.fill_(1e-2)  # statistics that do not fit the quantized weights
    reference = copy.deepcopy(model).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    calibrate(model, data)
    with torch.no_grad():
        reference(data[0][0])  # lazy init from a train-mode pass on the same batch
    alphas = [m.alpha.item() for m in model.modules() if isinstance(m, PACTActivation)]
    expected = [m.alpha.item() for m in reference.modules() if isinstance(m, PACTActivation)]
    assert alphas and alphas == pytest.approx(expected)
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())


def test_dorefa_calibrated_range_quantizes_on_0_s_with_s_the_999th_percentile(tmp_path):
    """act_range='calibrate': clip to [0, s], s fixed from the calibration batch, 2^k levels on it,
    and the packed file keeps s."""
    from deepshrink.api import load, pack
    from deepshrink.quant.act_quant import ScaledDoReFaActivation

    torch.manual_seed(0)
    data = [(torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long))]
    recipe = load_recipe({"method": "dorefa", "params": {"weight_bits": 4, "act_bits": 2, "act_range": "calibrate"},
                          "train": {**TINY_TRAIN, "epochs": 0}})
    model = deepshrink.create_model("resnet20", shortcut="B", num_classes=4)
    handler = METHODS.get("dorefa").handler_cls(recipe, select_layers(model, recipe))
    qmodel = handler.compress(model, CompressContext(train_data=data, train=recipe.train))
    acts = [m for m in qmodel.modules() if isinstance(m, ScaledDoReFaActivation)]
    assert len(acts) == 20 and all(bool(a.initialized) for a in acts)
    captured = {}
    layer = next(m for m in qmodel.modules() if any(c is acts[0] for c in m.children()))
    layer.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0].detach()))
    qmodel.train()(data[0][0])
    flat = captured["x"].clamp(min=0).flatten()
    s = float(flat.kthvalue(int(0.999 * flat.numel())).values)  # independent percentile
    assert acts[0].scale.item() == pytest.approx(s, rel=1e-6)
    y = acts[0](torch.linspace(-1, 2 * s, 101))
    levels = torch.unique(y)
    assert len(levels) == 4 and levels.min() == 0 and levels.max() == pytest.approx(s)  # 2 bits on [0, s]
    assert torch.allclose(levels, torch.arange(4) * s / 3)
    converted = handler.convert(qmodel).eval()
    pack(converted, tmp_path / "m.dsz")
    loaded = load(tmp_path / "m.dsz").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(data[0][0]), converted(data[0][0]), atol=1e-5)


@pytest.mark.parametrize("bad", [0, -1.0, "auto", True])
def test_dorefa_bad_act_range_is_refused(bad):
    with pytest.raises(UserError, match="act_range must be a number > 0"):
        load_recipe({"method": "dorefa", "params": {"act_range": bad}})


def xnor_resnet20(params):
    """A small option-B ResNet-20 through the xnor handler (no training), and an input batch."""
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", shortcut="B", num_classes=4)
    x = torch.randn(4, 3, 16, 16)
    handler, qmodel = run_handler("xnor", model, [(x, torch.zeros(4, dtype=torch.long))], epochs=0, params=params)
    return handler, qmodel, x


def converted_and_reloaded(handler, qmodel, path):
    """The handler's inference form of `qmodel` and the same packed to `path` and loaded back."""
    from deepshrink.api import load, pack

    converted = handler.convert(qmodel).eval()
    pack(converted, path)
    return converted, load(path).eval()


def test_xnor_drop_relu_removes_exactly_the_relus_that_feed_binary_layers_only(tmp_path):
    from deepshrink.nn.compressed import PackableIdentity

    handler, qmodel, x = xnor_resnet20({"drop_relu": True})
    removed = sorted(n for n, m in qmodel.named_modules() if isinstance(m, PackableIdentity))
    # each block's relu1 reads into conv2 only; a stage's last relu2 feeds the next stage's conv1 and its
    # (binary, option B) 1x1 downsample only; the other relu2s also feed an identity path, and the
    # stem's relu and layer3's last relu2 feed float layers: kept
    assert removed == sorted([f"layer{s}.{b}.relu1" for s in (1, 2, 3) for b in range(3)]
                             + ["layer1.2.relu2", "layer2.2.relu2"])
    assert isinstance(qmodel.relu, nn.ReLU) and isinstance(qmodel.layer3[2].relu2, nn.ReLU)
    converted, loaded = converted_and_reloaded(handler, qmodel, tmp_path / "m.dsz")
    assert isinstance(loaded.layer1[0].relu1, PackableIdentity)
    with torch.no_grad():
        assert torch.allclose(loaded(x), converted(x), atol=1e-5)


def test_xnor_drop_relu_on_an_untraceable_model_names_the_fix():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.conv2 = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.conv2(self.relu(self.conv(x))) if x.sum() > 0 else x

    recipe = load_recipe({"method": "xnor", "params": {"drop_relu": True}, "keep_first_last": False})
    handler = METHODS.get("xnor").handler_cls(recipe, select_layers(DataDependent(), recipe))
    with pytest.raises(UserError, match="drop_relu needs a model torch.fx can trace.*set drop_relu: false"):
        handler.prepare(DataDependent())


def test_xnor_without_scaling_map_reaches_the_layers_and_the_packed_model_keeps_it(tmp_path):
    handler, qmodel, x = xnor_resnet20({"scaling_map": False})
    acts = [m for m in qmodel.modules() if isinstance(m, XNORActivation)]
    assert acts and not any(a.scaling_map for a in acts)
    converted, loaded = converted_and_reloaded(handler, qmodel, tmp_path / "m.dsz")
    assert not any(m.scaling_map for m in loaded.modules() if isinstance(m, XNORActivation))
    with torch.no_grad():
        assert torch.allclose(loaded(x), converted(x), atol=1e-5)
