"""The pixel-lane kernel as a layer of its own (bits_lane_ops.cpp), on every code path this CPU runs.

`lane_conv` runs the convolution the whole-network plan runs for narrow binary layers: its integer sums
must equal F.conv2d of the +-1 tensors exactly, its epilogue (scale, shift, residual, ReLU, the next
layer's lanes) the plan's to the bit, and its lanes the signs of its floats.
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


def lane_conv(path, x_lanes, weight, shape, scale=None, shift=None, residual=None, relu=False, out_float=True,
              out_lane=0, pack_affine=(None, None)):
    out_ch = shape[1]
    scale = torch.ones(out_ch) if scale is None else scale
    shift = torch.zeros(out_ch) if shift is None else shift
    return kernels.native().lane_conv(x_lanes, weight, shape, scale, shift, residual, relu, out_float, out_lane,
                                      *pack_affine, path)


def reference(x, codes, shape):
    _, _, _, _, _, _, ph, pw, dh, dw, _ = shape
    return F.conv2d(binary_sign(x), 2.0 * codes.float() - 1.0, None, 1, (ph, pw), (dh, dw))


def lane_values(lanes: torch.Tensor, lane: int) -> torch.Tensor:
    """(N, H, W) lanes -> (N, lane, H, W) bits {0, 1}, channel c = bit c."""
    words = lanes.long() & ((1 << lane) - 1)  # int16/int32 sign-extend into int64: keep the lane's bits
    return torch.stack([(words >> c) & 1 for c in range(lane)], dim=1)


cases = st.fixed_dictionaries({
    "in_ch": st.sampled_from([1, 5, 16, 17, 31, 32, 33, 63, 64]),
    "wider": st.booleans(),  # lanes wider than the channels need
    "out_ch": st.sampled_from([1, 7, 8, 16, 19]),
    "kernel": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "size": st.tuples(st.integers(1, 5), st.integers(1, 40)),  # rows wider than one 32-pixel vector
    "batch": st.integers(1, 2),
    "seed": st.integers(0, 2**16),
})


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=40, deadline=None)
@given(case=cases)
def test_lane_conv_integer_sums_equal_float_conv_of_signs(path, case):
    gen = torch.Generator().manual_seed(case["seed"])
    in_ch, out_ch, (kh, kw), (h, w) = case["in_ch"], case["out_ch"], case["kernel"], case["size"]
    shape = [in_ch, out_ch, kh, kw, 1, 1, *case["padding"], *case["dilation"], 1]
    if h + 2 * shape[6] < shape[8] * (kh - 1) + 1 or w + 2 * shape[7] < shape[9] * (kw - 1) + 1:
        return
    lane = next(bits for bits in (16, 32, 64) if bits >= in_ch)
    lane = min(64, 2 * lane) if case["wider"] else lane
    x = torch.randn(case["batch"], in_ch, h, w, generator=gen)
    x[x.abs() < 0.05] = 0.0
    x[:, :1, :1, :1] = -0.0  # packs as -1, like binary_sign
    codes = torch.randint(0, 2, (out_ch, in_ch, kh, kw), generator=gen, dtype=torch.int8)
    y, bits = lane_conv(path, kernels.pack_lanes(x, lane), kernels.pack_lane_weights(codes, lane), shape)
    assert bits.numel() == 0
    assert torch.equal(y, reference(x, codes, shape))


def plan_of_one_lane_layer(path, x_shape, codes, shape, lane, out_lane, keep_floats, scale, shift, relu,
                           residual_weight, pack_affine):
    """x -> pack into lanes -> lane conv (+ 1x1 float conv residual, ReLU) in a NetPlan: the plan and the indices
    of x, y and the residual (-1: none)."""
    in_ch, out_ch = shape[:2]
    _, _, height, width = x_shape
    plan = kernels.native().NetPlan(path)
    x_v = plan.add_value(in_ch, height, width, True, 0, 1, None, None)
    bits_v = plan.add_value(in_ch, height, width, False, lane, 1, None, None)
    plan.add_pack(x_v, bits_v)
    r_v = -1
    if residual_weight is not None:
        r_v = plan.add_value(out_ch, height, width, True, 0, 1, None, None)
        plan.add_float_conv(x_v, r_v, [in_ch, out_ch, 1, 1, 1, 1, 0, 0, 1, 1, 1], residual_weight, torch.ones(out_ch),
                            torch.zeros(out_ch), False)
    y_v = plan.add_value(out_ch, height, width, keep_floats, out_lane, 1, *pack_affine)
    plan.add_bit_conv(bits_v, r_v, y_v, shape, *kernels.pack_weights(codes), scale, shift, relu)
    return plan, x_v, y_v, r_v


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("in_ch,lane", [(16, 16), (20, 32), (64, 64)])
@pytest.mark.parametrize("out_ch,out_lane", [(16, 0), (13, 16), (16, 16), (29, 32), (61, 64)])
@pytest.mark.parametrize("residual,relu,keep_floats", [(False, False, True), (True, True, True), (True, True, False)])
def test_lane_conv_epilogue_equals_the_plans_and_its_lanes_are_the_signs(path, in_ch, lane, out_ch, out_lane,
                                                                         residual, relu, keep_floats):
    """y = (dot * scale + shift + residual)+ as floats and/or the next layer's lanes sign(y * mul + add): the
    floats equal the float layer up to rounding and the plan's lane op exactly (the same kernel); the lanes
    equal pack_lanes of those floats."""
    if out_lane == 0 and not keep_floats:
        return
    gen = torch.Generator().manual_seed(in_ch * 100 + out_ch + 7 * residual + 11 * keep_floats)
    x = torch.randn(2, in_ch, 3, 37, generator=gen)  # two 16-pixel vectors and a partial one; 32 and a partial
    codes = torch.randint(0, 2, (out_ch, in_ch, 3, 3), generator=gen, dtype=torch.uint8)
    shape = [in_ch, out_ch, 3, 3, 1, 1, 1, 1, 1, 1, 1]
    scale, shift = torch.rand(out_ch, generator=gen) + 0.1, torch.randn(out_ch, generator=gen) * 3
    next_affine = (torch.rand(out_ch, generator=gen) + 0.5, torch.randn(out_ch, generator=gen)) if out_lane else \
        (None, None)
    r_weight = torch.randn(out_ch, in_ch, 1, 1, generator=gen) if residual else None
    plan, x_v, y_v, r_v = plan_of_one_lane_layer(path, x.shape, codes, shape, lane, out_lane, True, scale, shift, relu,
                                                 r_weight, next_affine)
    r = plan.run(x, x_v, r_v) if residual else None  # the plan's own residual, so that y can match it to the bit
    y, bits = lane_conv(path, kernels.pack_lanes(x, lane), kernels.pack_lane_weights(codes, lane), shape, scale, shift,
                        r, relu, keep_floats, out_lane, next_affine)
    expected = plan.run(x, x_v, y_v)
    floats = reference(x, codes, shape) * scale[:, None, None] + shift[:, None, None] + (0 if r is None else r)
    assert torch.allclose(expected, torch.relu(floats) if relu else floats, rtol=1e-5, atol=1e-4)
    if keep_floats:
        assert torch.equal(y, expected)
    else:
        assert y.numel() == 0
        y = expected  # the floats whose signs the lanes must hold
    if out_lane:
        assert bits.shape == (2, 3, 37) and bits.element_size() * 8 == out_lane
        assert torch.equal(bits, kernels.pack_lanes(y, out_lane, *next_affine))
    else:
        assert bits.numel() == 0


@pytest.mark.parametrize("channels,lane", [(1, 16), (16, 16), (17, 32), (32, 64), (64, 64)])
def test_pack_lanes_puts_channel_c_in_bit_c_and_zeros_past_the_channels(channels, lane):
    gen = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, 3, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = -0.0
    scale, shift = torch.rand(channels, generator=gen) + 0.5, torch.randn(channels, generator=gen)
    lanes = kernels.pack_lanes(x, lane, scale, shift)
    assert lanes.shape == (2, 3, 5) and lanes.element_size() * 8 == lane
    negative = torch.signbit(x * scale[:, None, None] + shift[:, None, None]).long()  # (N, C, H, W)
    values = lane_values(lanes, lane)
    assert torch.equal(values[:, :channels], negative)
    assert not values[:, channels:].any()
    assert lane_values(kernels.pack_lanes(x, lane), lane)[0, 0, 0, 0] == 1  # -0.0 is -1, as binary_sign


def test_lane_weights_hold_input_channel_c_of_each_tap_in_bit_c():
    codes = torch.randint(0, 2, (5, 20, 3, 2), generator=torch.Generator().manual_seed(3), dtype=torch.int8)
    weight = kernels.pack_lane_weights(codes, 32)
    assert weight.shape == (5, 6) and weight.dtype == torch.int32
    bits = lane_values(weight[None], 32)[0]  # (32, O, taps)
    assert torch.equal(bits[:20].permute(1, 0, 2), (codes == 0).long().reshape(5, 20, 6))  # code 0 is -1: bit 1
    assert not bits[20:].any()


@pytest.mark.parametrize("path", kernels.PATHS)
@pytest.mark.parametrize("shape,ternary,expected", [
    ([16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1], False, 16),
    ([17, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1], False, 32),
    ([64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1], False, 64),
    ([65, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1], False, 0),
    ([16, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1], False, 0),
    ([16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 2], False, 0),
    ([16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1], True, 0),
])
def test_lanes_are_the_engines_format_only_for_narrow_binary_stride_1_layers_on_avx512(path, shape, ternary, expected):
    if path not in kernels.supported_paths():
        pytest.skip(f"this CPU lacks the instructions of the {path} path")
    assert kernels.lane_bits(shape, ternary, path) == (expected if path == "avx512" else 0)


def test_lane_conv_refuses_what_the_lane_kernel_cannot_run():
    x, path = kernels.pack_lanes(torch.randn(1, 16, 4, 4), 16), kernels.supported_paths()[-1]
    weight = kernels.pack_lane_weights(torch.ones(8, 16, 3, 3, dtype=torch.int8), 16)
    with pytest.raises(RuntimeError, match="pixel lanes take one group, stride 1"):
        lane_conv(path, x, weight, [16, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1])
    with pytest.raises(RuntimeError, match="pixel lanes of 16 bits hold at most 16 channels, not 17"):
        lane_conv(path, x, weight, [17, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1])
    wide = kernels.pack_lane_weights(torch.ones(32, 16, 3, 3, dtype=torch.int8), 16)
    with pytest.raises(RuntimeError, match="pixel lanes of 16 bits hold at most 16 channels, not 32"):
        lane_conv(path, x, wide, [16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1], out_lane=16)
    with pytest.raises(RuntimeError, match="give floats, lanes or both"):
        lane_conv(path, x, weight, [16, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1], out_float=False)
    with pytest.raises(RuntimeError, match="weight must be lane_weights"):
        lane_conv(path, x, weight.int(), [16, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1])
    with pytest.raises(RuntimeError, match="pixel lanes of 16 bits hold at most 16 channels, not 17"):
        kernels.pack_lanes(torch.randn(1, 17, 2, 2), 16)
