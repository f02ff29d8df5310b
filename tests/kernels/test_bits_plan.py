"""The native whole-network plan (NetPlan) op by op, against float computation, on every code path.

A binary convolution's integer sums, read through either input format (pixel lanes of 16/32/64 bits or
64-channel words), must equal F.conv2d of the +-1 tensors exactly; the float ops (convolution with its
BatchNorm and ReLU, average pool + linear) and the epilogue (residual, ReLU, the next sign) equal
PyTorch's up to float rounding.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink import kernels
from deepshrink.quant.primitives import binary_sign

if kernels.native() is None:
    pytest.skip(f"no native bit kernels here: {kernels.unavailable_reason()}", allow_module_level=True)

PATHS = [pytest.param(path, marks=pytest.mark.skipif(path not in kernels.supported_paths(),
                                                     reason=f"this CPU lacks the instructions of the {path} path"))
         for path in kernels.PATHS]


def lane_of(in_ch, stride, groups, ternary):
    """The input format NetPlan's binary conv reads, as bits_plan.compile_plan picks it."""
    if ternary or groups != 1 or stride != (1, 1) or in_ch > 64:
        return 64
    return 16 if in_ch <= 16 else 32 if in_ch <= 32 else 64


def one_binary_layer(path, x_shape, codes, shape, ternary=False, scale=None, shift=None, in_affine=(None, None),
                     relu=False, with_residual=False, next_affine=None):
    """A plan: float input -> pack (with in_affine) -> binary conv (+ residual, ReLU) -> float output
    (and bits for a next layer when next_affine is given). Returns (plan, input, output, residual) indices."""
    in_ch, out_ch, kh, kw, sh, sw, ph, pw, dh, dw, groups = shape
    _, _, height, width = x_shape
    out_h, out_w = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    plan = kernels.native().NetPlan(path)
    x = plan.add_value(in_ch, height, width, True, 0, 1, None, None)
    lane = lane_of(in_ch, (sh, sw), groups, ternary)
    bits = plan.add_value(in_ch, height, width, False, lane, groups if lane == 64 else 1, *in_affine)
    residual = plan.add_value(out_ch, out_h, out_w, True, 0, 1, None, None) if with_residual else -1
    nxt = next_affine or (None, None)
    y = plan.add_value(out_ch, out_h, out_w, True, 16 if next_affine else 0, 1, *nxt)
    plan.add_pack(x, bits)
    planes = kernels.pack_weights(codes, groups, ternary=ternary)
    plan.add_bit_conv(bits, residual, y, shape, *planes, torch.ones(out_ch) if scale is None else scale,
                      torch.zeros(out_ch) if shift is None else shift, relu)
    return plan, x, y, residual


def reference(x, weight, shape):
    _, _, _, _, sh, sw, ph, pw, dh, dw, groups = shape
    return F.conv2d(binary_sign(x), weight, None, (sh, sw), (ph, pw), (dh, dw), groups)


NEXT_LAYER = [None, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1]  # a 3x3 binary conv to 8 channels (in_ch filled in)


def add_next_binary_layer(plan, y_v, channels, height, width, codes):
    """A 3x3 binary conv to 8 channels reading y_v's bits; the index of its float output."""
    z_v = plan.add_value(8, height, width, True, 0, 1, None, None)
    plan.add_bit_conv(y_v, -1, z_v, [channels] + NEXT_LAYER[1:], *kernels.pack_weights(codes), torch.ones(8),
                      torch.zeros(8), False)
    return z_v


def assert_next_layer_reads_the_same_bits(plan, reference_plan, x, x_v, z_v, y, next_mul, next_add, codes):
    """z equals the reference plan's and, given y (None: floats not kept), the float conv of y's signs."""
    z = plan.run(x, x_v, z_v)
    assert torch.equal(z, reference_plan.run(x, x_v, z_v))
    if y is not None:  # exact given y: the bits are the signs of y * next_mul + next_add
        signs = y * next_mul[:, None, None] + next_add[:, None, None]
        assert torch.equal(z, reference(signs, 2.0 * codes.float() - 1.0, [y.shape[1]] + NEXT_LAYER[1:]))


cases = st.fixed_dictionaries({
    "groups": st.sampled_from([1, 1, 1, 2]),
    "group_in": st.sampled_from([1, 3, 16, 17, 32, 33, 64, 65]),
    "group_out": st.sampled_from([1, 5, 8, 16, 19]),
    "kernel": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "stride": st.sampled_from([(1, 1), (1, 1), (2, 2), (2, 1)]),
    "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "size": st.tuples(st.integers(1, 6), st.integers(1, 40)),  # rows wider than one 32-lane vector
    "ternary": st.booleans(),
    "seed": st.integers(0, 2**16),
})


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=40, deadline=None)
@given(case=cases)
def test_binary_conv_in_the_plan_sums_exactly_through_lanes_and_words(path, case):
    gen = torch.Generator().manual_seed(case["seed"])
    groups, (kh, kw), (h, w) = case["groups"], case["kernel"], case["size"]
    cin, cout = groups * case["group_in"], groups * case["group_out"]
    shape = [cin, cout, kh, kw, *case["stride"], *case["padding"], *case["dilation"], groups]
    if h + 2 * shape[6] < shape[8] * (kh - 1) + 1 or w + 2 * shape[7] < shape[9] * (kw - 1) + 1:
        return
    x = torch.randn(2, cin, h, w, generator=gen)
    x[x.abs() < 0.05] = 0.0
    x[:, :1, :1, :1] = -0.0  # packs as -1, like binary_sign
    codes = torch.randint(-1 if case["ternary"] else 0, 2, (cout, case["group_in"], kh, kw), generator=gen,
                          dtype=torch.int8)
    plan, x_index, y_index, _ = one_binary_layer(path, x.shape, codes, shape, ternary=case["ternary"])
    weight = codes.float() if case["ternary"] else 2.0 * codes.float() - 1.0
    assert torch.equal(plan.run(x, x_index, y_index), reference(x, weight, shape))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("in_ch", [16, 32, 64, 100])
@pytest.mark.parametrize("next_stride", [1, 2])
def test_block_of_float_conv_and_two_binary_convs_exchanging_bits(path, in_ch, next_stride):
    """x -> 1x1 float conv + BN + ReLU = r;  x -> sign(BN(x)) -> binary conv + BN + r, ReLU = y (floats, and
    the next layer's sign bits straight from the epilogue) -> binary conv = z. Lanes of 16/32/64 bits or
    words on the first binary conv (in_ch); 16-bit lanes or words (stride 2) on the second."""
    gen = torch.Generator().manual_seed(in_ch + next_stride)
    x = torch.randn(2, in_ch, 5, 35, generator=gen)
    plan = kernels.native().NetPlan(path)
    x_v = plan.add_value(in_ch, 5, 35, True, 0, 1, None, None)
    r_weight, r_mul, r_add = torch.randn(16, in_ch, 1, 1, generator=gen), torch.rand(16) + 0.5, torch.randn(16)
    r_v = plan.add_value(16, 5, 35, True, 0, 1, None, None)
    plan.add_float_conv(x_v, r_v, [in_ch, 16, 1, 1, 1, 1, 0, 0, 1, 1, 1], r_weight, r_mul, r_add, True)

    in_mul, in_add = torch.rand(in_ch, generator=gen) + 0.5, torch.randn(in_ch, generator=gen)
    bits_v = plan.add_value(in_ch, 5, 35, False, lane_of(in_ch, (1, 1), 1, False), 1, in_mul, in_add)
    plan.add_pack(x_v, bits_v)
    codes = torch.randint(0, 2, (16, in_ch, 3, 3), generator=gen, dtype=torch.uint8)
    alpha, shift = torch.rand(16, generator=gen) + 0.1, torch.randn(16, generator=gen)
    next_mul, next_add = torch.rand(16, generator=gen) + 0.5, torch.randn(16, generator=gen) * 0.5
    y_v = plan.add_value(16, 5, 35, True, lane_of(16, (next_stride,) * 2, 1, False), 1, next_mul, next_add)
    shape = [in_ch, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1]
    plan.add_bit_conv(bits_v, r_v, y_v, shape, *kernels.pack_weights(codes), alpha, shift, True)

    codes2 = torch.randint(0, 2, (8, 16, 3, 3), generator=gen, dtype=torch.uint8)
    shape2 = [16, 8, 3, 3, next_stride, next_stride, 1, 1, 1, 1, 1]
    z_v = plan.add_value(8, (5 - 1) // next_stride + 1, (35 - 1) // next_stride + 1, True, 0, 1, None, None)
    plan.add_bit_conv(y_v, -1, z_v, shape2, *kernels.pack_weights(codes2), torch.ones(8), torch.zeros(8), False)

    r = torch.relu(F.conv2d(x, r_weight) * r_mul[:, None, None] + r_add[:, None, None])
    normed = x * in_mul[:, None, None] + in_add[:, None, None]
    conv = reference(normed, 2.0 * codes.float() - 1.0, shape)
    y_expected = torch.relu(conv * alpha[:, None, None] + shift[:, None, None] + r)
    y = plan.run(x, x_v, y_v)
    assert torch.allclose(y, y_expected, rtol=1e-5, atol=1e-5)
    # the second layer reads the bits the first one's epilogue wrote: its sums are exact given y
    z_expected = reference(y * next_mul[:, None, None] + next_add[:, None, None], 2.0 * codes2.float() - 1.0, shape2)
    assert torch.equal(plan.run(x, x_v, z_v), z_expected)


@pytest.mark.parametrize("path", PATHS)
def test_average_pool_and_linear(path):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 20, 4, 6, generator=gen)
    weight, bias = torch.randn(10, 20, generator=gen), torch.randn(10, generator=gen)
    plan = kernels.native().NetPlan(path)
    x_v = plan.add_value(20, 4, 6, True, 0, 1, None, None)
    y_v = plan.add_value(10, 1, 1, True, 0, 1, None, None)
    plan.add_pool_linear(x_v, y_v, weight, bias)
    assert torch.allclose(plan.run(x, x_v, y_v).reshape(3, 10), F.linear(x.mean((2, 3)), weight, bias),
                          rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("out_ch,groups", [(4, 2), (16, 1), (32, 1), (64, 1)])  # 16/32/64: sums held in registers
def test_float_conv_with_stride_padding_dilation_and_groups(path, out_ch, groups):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, 9, 11, generator=gen)
    weight = torch.randn(out_ch, 6 // groups, 3, 2, generator=gen)
    shape = [6, out_ch, 3, 2, 2, 3, 1, 2, 2, 1, groups]
    plan = kernels.native().NetPlan(path)
    x_v = plan.add_value(6, 9, 11, True, 0, 1, None, None)
    expected = F.conv2d(x, weight, None, (2, 3), (1, 2), (2, 1), groups)
    y_v = plan.add_value(out_ch, *expected.shape[2:], True, 0, 1, None, None)
    plan.add_float_conv(x_v, y_v, shape, weight, torch.ones(out_ch), torch.zeros(out_ch), False)
    assert torch.allclose(plan.run(x, x_v, y_v), expected, rtol=1e-5, atol=1e-5)


def test_plan_refuses_mismatched_values():
    plan = kernels.native().NetPlan("portable")
    x_v = plan.add_value(16, 8, 8, True, 0, 1, None, None)
    y_v = plan.add_value(16, 7, 8, True, 0, 1, None, None)
    with pytest.raises(RuntimeError, match="output value does not match"):
        plan.add_float_conv(x_v, y_v, [16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1], torch.zeros(16, 16, 3, 3),
                            torch.ones(16), torch.zeros(16), False)
    with pytest.raises(RuntimeError, match="pixel lanes hold one group of at most 16 channels"):
        plan.add_value(17, 8, 8, False, 16, 1, None, None)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("in_ch", [16, 32, 64])
@pytest.mark.parametrize("out_lane,out_ch", [(0, 19), (16, 13), (16, 16), (32, 29), (32, 32), (64, 61), (64, 64),
                                             (64, 70)])
@pytest.mark.parametrize("residual,relu,keep_floats", [(False, False, True), (True, True, True), (True, True, False),
                                                       (False, True, False)])
def test_lane_rows_write_the_floats_and_bits_of_the_generic_epilogue(path, in_ch, out_lane, out_ch, residual, relu,
                                                                     keep_floats):
    """x -> sign -> binary conv on pixel lanes (+ residual, ReLU) = y, kept as floats and/or as the next layer's
    bits (pixel words of 16/32/64 bits, or 64-channel words past 64 channels) -> binary conv = z. On the avx512
    path the lane conv runs with its epilogue in registers (bits_lane_rows.cpp); y and z must equal the
    portable path's (counts, then the generic epilogue) exactly, and z the float convolution of y's signs."""
    if out_lane == 0 and not keep_floats:
        return
    gen = torch.Generator().manual_seed(in_ch * 1000 + out_ch * 10 + residual + 2 * relu + 4 * keep_floats)
    height, width = 3, 37  # two 16-pixel vectors and a partial one; a 32-pixel one and a partial one
    x = torch.randn(2, in_ch, height, width, generator=gen)
    codes = torch.randint(0, 2, (out_ch, in_ch, 3, 3), generator=gen, dtype=torch.uint8)
    alpha, shift = torch.rand(out_ch, generator=gen) + 0.1, torch.randn(out_ch, generator=gen) * 3
    next_mul, next_add = torch.rand(out_ch, generator=gen) + 0.5, torch.randn(out_ch, generator=gen)
    codes2 = torch.randint(0, 2, (8, out_ch, 3, 3), generator=gen, dtype=torch.uint8)
    r_weight = torch.randn(out_ch, in_ch, 1, 1, generator=gen)
    shape = [in_ch, out_ch, 3, 3, 1, 1, 1, 1, 1, 1, 1]

    def build(on):
        plan = kernels.native().NetPlan(on)
        x_v = plan.add_value(in_ch, height, width, True, 0, 1, None, None)
        bits_v = plan.add_value(in_ch, height, width, False, lane_of(in_ch, (1, 1), 1, False), 1, None, None)
        plan.add_pack(x_v, bits_v)
        r_v = -1
        if residual:
            r_v = plan.add_value(out_ch, height, width, True, 0, 1, None, None)
            plan.add_float_conv(x_v, r_v, [in_ch, out_ch, 1, 1, 1, 1, 0, 0, 1, 1, 1], r_weight, torch.ones(out_ch),
                                torch.zeros(out_ch), False)
        affine = (next_mul, next_add) if out_lane else (None, None)
        y_v = plan.add_value(out_ch, height, width, keep_floats, out_lane, 1, *affine)
        plan.add_bit_conv(bits_v, r_v, y_v, shape, *kernels.pack_weights(codes), alpha, shift, relu)
        z_v = add_next_binary_layer(plan, y_v, out_ch, height, width, codes2) if out_lane else -1
        return plan, x_v, y_v, z_v

    plan, x_v, y_v, z_v = build(path)
    reference_plan = build("portable")[0]
    conv = reference(x, 2.0 * codes.float() - 1.0, shape) * alpha[:, None, None] + shift[:, None, None]
    if residual:
        conv = conv + F.conv2d(x, r_weight)
    y_expected = torch.relu(conv) if relu else conv
    y = None
    if keep_floats:
        y = plan.run(x, x_v, y_v)
        assert torch.equal(y, reference_plan.run(x, x_v, y_v))
        assert torch.allclose(y, y_expected, rtol=1e-5, atol=1e-4)
    if out_lane:
        assert_next_layer_reads_the_same_bits(plan, reference_plan, x, x_v, z_v, y, next_mul, next_add, codes2)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("stride", [1, 2, 3])  # one load, two loads and a permute, a gather (AVX-512)
@pytest.mark.parametrize("out_ch,out_lane", [(16, 16), (19, 0), (32, 32), (40, 64), (70, 64)])
def test_float_conv_rows_equal_the_generic_row_and_write_the_next_layers_bits(path, stride, out_ch, out_lane):
    """x -> float conv + BatchNorm + ReLU = y (floats, and the next binary layer's bits) -> binary conv = z. On
    the avx512 path the float rows keep 16 channels' sums in registers (bits_float_rows.cpp); y and z must
    equal the portable path's (the generic row) exactly, and z the float convolution of y's signs."""
    gen = torch.Generator().manual_seed(stride * 100 + out_ch)
    x = torch.randn(2, 5, 7, 37, generator=gen)
    weight = torch.randn(out_ch, 5, 3, 3, generator=gen)
    mul, add = torch.rand(out_ch, generator=gen) + 0.5, torch.randn(out_ch, generator=gen)
    next_mul, next_add = torch.rand(out_ch, generator=gen) + 0.5, torch.randn(out_ch, generator=gen) * 0.2
    codes = torch.randint(0, 2, (8, out_ch, 3, 3), generator=gen, dtype=torch.uint8)
    shape = [5, out_ch, 3, 3, stride, stride, 1, 2, 1, 2, 1]
    expected = torch.relu(F.conv2d(x, weight, None, stride, (1, 2), (1, 2)) * mul[:, None, None] + add[:, None, None])
    out_h, out_w = expected.shape[2:]

    def build(on):
        plan = kernels.native().NetPlan(on)
        x_v = plan.add_value(5, 7, 37, True, 0, 1, None, None)
        affine = (next_mul, next_add) if out_lane else (None, None)
        y_v = plan.add_value(out_ch, out_h, out_w, True, out_lane, 1, *affine)
        plan.add_float_conv(x_v, y_v, shape, weight, mul, add, True)
        z_v = add_next_binary_layer(plan, y_v, out_ch, out_h, out_w, codes) if out_lane else -1
        return plan, x_v, y_v, z_v

    plan, x_v, y_v, z_v = build(path)
    reference_plan = build("portable")[0]
    y = plan.run(x, x_v, y_v)
    assert torch.equal(y, reference_plan.run(x, x_v, y_v))
    assert torch.allclose(y, expected, rtol=1e-5, atol=1e-5)
    if out_lane:
        assert_next_layer_reads_the_same_bits(plan, reference_plan, x, x_v, z_v, y, next_mul, next_add, codes)
