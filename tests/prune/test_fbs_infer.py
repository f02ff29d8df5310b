"""FBSBlock's skip path (fbs_infer.py): whole-model TorchScript, derived per-stage tensors, latency helper."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepshrink
from deepshrink.config import load_recipe, select_layers
from deepshrink.errors import UserError
from deepshrink.prune.fbs import apply_fbs, convert_fbs
from deepshrink.prune.fbs_gate import calibrate_predictors
from deepshrink.prune.fbs_infer import NNPACK_MIN_PIXELS, FBSBlock, script_for_latency


def _calibrated_fbs_resnet20(shortcut: str, keep_ratio: float = 0.5) -> nn.Module:
    """Converted FBS ResNet-20 as the latency benchmark builds it: predictors fitted by least squares
    on two random batches, no fine-tuning (the same ops and shapes as a fine-tuned one). BN variances
    above 1 keep the untrained residual chain from growing without bound."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    model = deepshrink.create_model("resnet20", shortcut=shortcut)
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        bn.running_mean.uniform_(-0.2, 0.2, generator=gen)
        bn.running_var.uniform_(2.0, 4.0, generator=gen)
    model.eval()
    apply_fbs(model, {name: keep_ratio for name in select_layers(model, load_recipe({"method": "fbs"}))})
    calibrate_predictors(model, [(torch.randn(16, 3, 32, 32, generator=gen), None) for _ in range(2)], 2)
    return convert_fbs(model)


def _masked_dense(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The converted model with every FBSBlock computed densely and masked (`dense_forward`)."""
    handles = [m.register_forward_hook(lambda m, args, out: m.dense_forward(args[0]))
               for m in model.modules() if isinstance(m, FBSBlock)]
    try:
        return model(x)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_whole_model_script_computes_the_masked_dense_function(shortcut):
    model = _calibrated_fbs_resnet20(shortcut)
    fast = script_for_latency(model)
    assert isinstance(fast, torch.jit.ScriptModule)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = _masked_dense(model, x)
        assert torch.isfinite(expected).all() and expected.abs().max() > 0
        eager = model(x)
        assert torch.allclose(eager, expected, atol=1e-5, rtol=1e-4)
        assert torch.allclose(fast(x), expected, atol=1e-5, rtol=1e-4)  # batch of 3: per-sample loop
        assert torch.allclose(fast(x[1:2]), expected[1:2], atol=1e-5, rtol=1e-4)  # batch 1: the fast path
    # the stem's BatchNorm is folded by freezing: no batch_norm op is left in the compiled graph
    assert "batch_norm" not in str(fast.graph) and "batch_norm" not in str(fast.inlined_graph)


def test_derived_phi_transpose_follows_load_state_dict_and_dtype_changes():
    donor, block = (_calibrated_fbs_resnet20("B").layer2[0] for _ in range(2))
    with torch.no_grad():
        for name, buffer in donor.named_buffers():
            if name.startswith("phi"):
                buffer.normal_(0, 0.5)  # new saliency predictors: other channels win
    x = torch.relu(torch.randn(1, 16, 32, 32))
    with torch.no_grad():
        before = block(x)
        block.load_state_dict(donor.state_dict())
        after = block(x)
        assert not torch.allclose(before, after, atol=1e-3)
        assert torch.allclose(after, donor.dense_forward(x), atol=1e-5, rtol=1e-4)
        block.double()
        assert block._phis_t[1].dtype == torch.float64
        assert torch.allclose(block(x.double()), donor.double().dense_forward(x.double()), atol=1e-10)


def test_packed_model_compiles_after_load_and_reproduces_outputs(tmp_path):
    model = _calibrated_fbs_resnet20("B")
    deepshrink.pack(model, tmp_path / "fbs.dsz")
    fast = script_for_latency(deepshrink.load(tmp_path / "fbs.dsz"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.backends.nnpack.is_available(), reason="this torch build has no NNPACK")
def test_nnpack_conv_path_matches_f_conv2d_and_stays_off_where_it_does_not_apply():
    model = _calibrated_fbs_resnet20("B")
    wide, strided = model.layer1[0], model.layer2[0]  # 32x32 stride 1 / first conv stride 2
    assert wide._nnpack_min_pixels == [NNPACK_MIN_PIXELS, NNPACK_MIN_PIXELS]
    assert strided._nnpack_min_pixels[0] == -1  # NNPACK is slower at stride 2: never used there
    x = torch.relu(torch.randn(1, 16, 32, 32))
    with torch.no_grad():
        fast = wide(x)
        wide._nnpack_min_pixels = [-1, -1]  # the same block on F.conv2d
        assert torch.allclose(fast, wide(x), atol=1e-5, rtol=1e-4)
        assert torch.allclose(fast, wide.dense_forward(x), atol=1e-5, rtol=1e-4)
        # the op itself against F.conv2d on a kept-channel shape, bias included
        weight, bias = torch.randn(8, 16, 3, 3), torch.randn(8)
        assert torch.allclose(torch._nnpack_spatial_convolution(x, weight, bias, [1, 1], [1, 1]),
                              F.conv2d(x, weight, bias, 1, 1), atol=1e-4, rtol=1e-4)
        wide.double()  # NNPACK is fp32 only: a double block falls back to F.conv2d
        assert wide._nnpack_min_pixels == [-1, -1]
        assert torch.allclose(wide(x.double()), wide.dense_forward(x.double()), atol=1e-10)


class _KeywordOnly(nn.Module):
    def forward(self, x, *, scale=2.0):
        return x * scale


def test_script_for_latency_names_an_uncompilable_model():
    with pytest.raises(UserError, match="_KeywordOnly does not compile with TorchScript.*eager model"):
        script_for_latency(_KeywordOnly())


def test_script_for_latency_compiles_standalone_fbs_convs_too():
    torch.manual_seed(0)
    model = deepshrink.create_model("lenet5").eval()
    gates = apply_fbs(model, {"conv2": 0.5})
    gates["conv2"].predictor.weight.data.normal_(0, 0.5)
    convert_fbs(model)
    fast = script_for_latency(model)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        y = fast(x)
        assert torch.allclose(y, model(x), atol=1e-5)
        assert torch.allclose(fast(x[2:3]), y[2:3], atol=1e-5)
