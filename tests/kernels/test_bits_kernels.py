"""The native bit kernels against float computation, on every code path this CPU runs.

Integer sums must equal F.conv2d of the +-1 tensors exactly (any stride, padding, dilation, groups,
channel counts that are not multiples of 64); fused epilogues equal the float layer up to rounding.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepshrink import kernels
from deepshrink.errors import UserError
from deepshrink.quant.primitives import binary_sign

if kernels.native() is None:
    pytest.skip(f"no native bit kernels here: {kernels.unavailable_reason()}", allow_module_level=True)


def path_params():
    params = []
    for path in kernels.PATHS:
        supported = path in kernels.supported_paths()
        params.append(pytest.param(path, marks=pytest.mark.skipif(
            not supported, reason=f"this CPU lacks the instructions of the {path} path")))
    return params


PATHS = path_params()


def run_conv(bits, planes, shape, path, scale=None, shift=None, **epilogue):
    """The kernel with an identity epilogue unless given: returns the float output."""
    out_channels = shape[1]
    scale = torch.ones(out_channels) if scale is None else scale
    shift = torch.zeros(out_channels) if shift is None else shift
    y, packed = kernels.native().conv(bits, *planes, shape, scale, shift, epilogue.get("residual"),
                                      epilogue.get("relu", False), epilogue.get("out_float", True),
                                      epilogue.get("pack_groups", 0), epilogue.get("pack_scale"),
                                      epilogue.get("pack_shift"), path)
    return y, packed


conv_cases = st.fixed_dictionaries({
    "groups": st.sampled_from([1, 1, 2, 3]),
    "group_in": st.sampled_from([1, 5, 63, 64, 65, 100, 130]),
    "group_out": st.sampled_from([1, 3, 8, 13, 17, 70]),
    "kernel": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 2)),
    "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "size": st.tuples(st.integers(1, 7), st.integers(1, 7)),
    "batch": st.integers(1, 2),
    "seed": st.integers(0, 2**16),
})


def draw_conv(case, ternary=False):
    """Random +-1 input (float, with exact zeros and -0.0), codes, and the float reference's shape."""
    gen = torch.Generator().manual_seed(case["seed"])
    groups, kh, kw = case["groups"], *case["kernel"]
    cin, cout = groups * case["group_in"], groups * case["group_out"]
    h, w = case["size"]
    x = torch.randn(case["batch"], cin, h, w, generator=gen)
    x[x.abs() < 0.05] = 0.0
    x[:, :1, :1, :1] = -0.0  # packs as -1, like binary_sign
    low = -1 if ternary else 0
    codes = torch.randint(low, 2, (cout, case["group_in"], kh, kw), generator=gen, dtype=torch.int8)
    shape = [cin, cout, kh, kw, *case["stride"], *case["padding"], *case["dilation"], groups]
    return x, codes, shape


def reference(x, weight, shape):
    _, _, _, _, sh, sw, ph, pw, dh, dw, groups = shape
    return F.conv2d(binary_sign(x), weight, None, (sh, sw), (ph, pw), (dh, dw), groups)


def fits(x, shape):
    _, _, kh, kw, _, _, ph, pw, dh, dw, _ = shape
    return x.shape[2] + 2 * ph >= dh * (kh - 1) + 1 and x.shape[3] + 2 * pw >= dw * (kw - 1) + 1


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conv_cases)
def test_binary_conv_integer_sums_equal_float_conv_of_signs(path, case):
    x, codes, shape = draw_conv(case)
    if not fits(x, shape):
        return
    bits = kernels.pack_activations(x, shape[10], path=path)
    y, _ = run_conv(bits, kernels.pack_weights(codes, shape[10]), shape, path)
    expected = reference(x, 2.0 * codes.float() - 1.0, shape)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=25, deadline=None)
@given(case=conv_cases)
def test_ternary_conv_integer_sums_equal_float_conv(path, case):
    x, codes, shape = draw_conv(case, ternary=True)
    if not fits(x, shape):
        return
    bits = kernels.pack_activations(x, shape[10], path=path)
    y, _ = run_conv(bits, kernels.pack_weights(codes, shape[10], ternary=True), shape, path)
    assert torch.equal(y, reference(x, codes.float(), shape))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("channels,groups", [(1, 1), (64, 1), (70, 1), (200, 2), (129, 3)])
def test_packing_puts_sign_bits_channels_last_with_zero_padding(path, channels, groups):
    x = torch.randn(2, channels, 3, 4, generator=torch.Generator().manual_seed(channels))
    scale, shift = torch.rand(channels) + 0.5, torch.randn(channels)
    bits = kernels.pack_activations(x, groups, scale, shift, path=path)
    per_group = channels // groups
    words = -(-per_group // 64)
    assert bits.shape == (2, 3, 4, groups * words) and bits.dtype == torch.int64
    negative = torch.signbit(x * scale[:, None, None] + shift[:, None, None]).permute(0, 2, 3, 1)  # (N, H, W, C)
    for g in range(groups):
        for c in range(words * 64):
            bit = (bits[..., g * words + c // 64] >> (c % 64)) & 1
            want = negative[..., g * per_group + c].long() if c < per_group else torch.zeros_like(bit)
            assert torch.equal(bit, want), (g, c)


@pytest.mark.parametrize("path", PATHS)
def test_fused_epilogue_equals_float_layer_and_packs_the_next_sign(path):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 70, 6, 5, generator=gen)
    codes = torch.randint(0, 2, (40, 70, 3, 3), generator=gen, dtype=torch.uint8)
    shape = [70, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1]
    alpha, bias = torch.rand(40, generator=gen), torch.randn(40, generator=gen)
    bn_mul, bn_add = torch.rand(40, generator=gen) + 0.5, torch.randn(40, generator=gen)
    residual = torch.randn(2, 40, 6, 5, generator=gen)
    conv = reference(x, 2.0 * codes.float() - 1.0, shape) * alpha[:, None, None] + bias[:, None, None]
    expected = torch.relu(conv * bn_mul[:, None, None] + bn_add[:, None, None] + residual)
    next_mul, next_add = torch.rand(40, generator=gen) + 0.5, -torch.rand(40, generator=gen)
    bits = kernels.pack_activations(x, path=path)
    y, packed = run_conv(bits, kernels.pack_weights(codes), shape, path, scale=alpha * bn_mul,
                         shift=bias * bn_mul + bn_add, residual=residual, relu=True, pack_groups=2,
                         pack_scale=next_mul, pack_shift=next_add)
    assert torch.allclose(y, expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(packed, kernels.pack_activations(y, 2, next_mul, next_add, path="portable"))


@pytest.mark.parametrize("path", PATHS)
def test_linear_runs_as_a_1x1_conv(path):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 300, generator=gen)
    codes = torch.randint(0, 2, (10, 300), generator=gen, dtype=torch.uint8)
    y, _ = run_conv(kernels.pack_activations(x, path=path), kernels.pack_weights(codes),
                    [300, 10, 1, 1, 1, 1, 0, 0, 1, 1, 1], path)
    assert torch.equal(y.reshape(3, 10), binary_sign(x) @ (2.0 * codes.float() - 1.0).T)


def test_path_choice_honours_the_environment_and_refuses_unknown_paths(monkeypatch):
    monkeypatch.setenv(kernels.PATH_ENV, "portable")
    assert kernels.active_path() == "portable"
    monkeypatch.setenv(kernels.PATH_ENV, "neon")
    with pytest.raises(UserError, match="unknown bit-kernel path 'neon'.*avx512, avx2, portable"):
        kernels.active_path()
    monkeypatch.delenv(kernels.PATH_ENV)
    assert kernels.active_path() == kernels.supported_paths()[0]


def test_a_path_this_cpu_lacks_is_refused_with_its_name(monkeypatch):
    missing = [p for p in kernels.PATHS if p not in kernels.supported_paths()]
    if not missing:
        # every path runs here: the check still has to hold in the C++ entry points
        with pytest.raises(RuntimeError, match="unknown bit-kernel path 'sse'"):
            kernels.native().pack_activations(torch.zeros(1, 1), 1, None, None, "sse")
        return
    monkeypatch.setenv(kernels.PATH_ENV, missing[0])
    with pytest.raises(UserError, match=f"this CPU cannot run the {missing[0]} bit-kernel path"):
        kernels.active_path()


def test_codes_outside_the_encoding_are_refused():
    with pytest.raises(RuntimeError, match="weight code 2 out of range for binary weights"):
        kernels.pack_weights(torch.full((2, 3), 2, dtype=torch.int8))


def test_without_a_compiler_the_package_says_so_in_one_line_and_keeps_the_float_path(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DEEPSHRINK_KERNELS_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(kernels, "_state", {})
    assert kernels.native() is None and kernels.supported_paths() == []
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no C++ compiler" in lines[0] and "float path" in lines[0]
