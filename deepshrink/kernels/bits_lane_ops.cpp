// The pixel-lane binary convolution as a layer of its own. The plan (bits_plan.cpp) runs narrow binary layers
// (at most 64 input channels, stride 1, one group) on pixel lanes (bits_lanes.cpp counts, bits_lane_rows.cpp
// fuses the epilogue) rather than on the word kernel that bits_ops.cpp's `conv` runs; `lane_conv` gives that
// lane kernel the per-layer interface of `conv` (tensors in, tensors out, the same epilogue), so a layer can be
// tested and timed on the code the engine runs. Also what the plan and `lane_conv` share: the weights' lane
// form, the shape check, and the row loop that picks the fused row or the counts and the generic epilogue.
//
// Layouts (all contiguous):
//   lane activations  (N, H, W) int16/int32/int64: bit c of a pixel's lane is channel c (at most 16/32/64),
//                     1 for -1 as everywhere (bits.h); bits past the channels are 0
//   lane weights      (O, KH * KW) of the input's lane type: bit c of tap (i, j) is input channel c
//   floats            (N, C, H, W) (a channel's row contiguous: the plan's value layout)
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "bits_plan.h"

namespace deepshrink_bits {

Path parse_path(const std::string& name);               // bits_ops.cpp
ConvShape to_shape(const std::vector<int64_t>& shape);  // bits_ops.cpp
const float* data_or_null(const std::optional<at::Tensor>& t);                                       // bits_ops.cpp
std::optional<at::Tensor> checked_vector(const std::optional<at::Tensor>& t, int64_t n, const char* what);  // ditto

namespace {

at::ScalarType lane_dtype(int64_t lane) { return lane == 16 ? at::kShort : lane == 32 ? at::kInt : at::kLong; }

int64_t lane_of(const at::Tensor& t) {
  const auto type = t.scalar_type();
  TORCH_CHECK(type == at::kShort || type == at::kInt || type == at::kLong, "pixel lanes are int16, int32 or int64");
  return t.element_size() * 8;
}

void check_lane_width(int64_t lane, int64_t channels) {
  TORCH_CHECK(lane == 16 || lane == 32 || lane == 64, "pixel lanes are 16, 32 or 64 bits, not ", lane);
  TORCH_CHECK(channels <= lane, "pixel lanes of ", lane, " bits hold at most ", lane, " channels, not ", channels);
}

void check_lane_shape(const ConvShape& s, int64_t lane) {
  check_lane_width(lane, s.in_ch);
  TORCH_CHECK(s.groups == 1 && s.sh == 1 && s.sw == 1 && s.kh * s.kw <= 64,
              "pixel lanes take one group, stride 1, at most 64 taps");
}

template <typename T>
void rows_of(Path path, const T* x, const T* w, const LaneShape& shape, int64_t oh_begin, int64_t oh_end,
             const float* scale, const float* shift, const RowSink& sink, LaneScratch& scratch) {
  if (const LaneRowFn<T> fused = lane_row_fn<T>(path, *sink.out)) {
    for (int64_t oh = oh_begin; oh < oh_end; ++oh) fused(x, w, shape, oh, scale, shift, sink);
    return;
  }
  scratch.size_for(shape.out_ch, shape.out_w);
  const LaneCountFn<T> count = lane_count_fn<T>(path);
  for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
    count(x, w, shape, oh, scratch.counts.data(), scratch.valid.data());
    count_epilogue(scratch.counts.data(), 1, scratch.chan_offset.data(), scratch.valid.data(), false, scale, shift, oh,
                   sink, scratch.row.data());
  }
}

}  // namespace

void lane_conv_rows(Path path, int in_lane, const void* x, const void* w, const LaneShape& shape, int64_t oh_begin,
                    int64_t oh_end, const float* scale, const float* shift, const RowSink& sink, LaneScratch& scratch) {
  if (in_lane == 16)
    rows_of(path, static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(w), shape, oh_begin, oh_end, scale,
            shift, sink, scratch);
  else if (in_lane == 32)
    rows_of(path, static_cast<const uint32_t*>(x), static_cast<const uint32_t*>(w), shape, oh_begin, oh_end, scale,
            shift, sink, scratch);
  else
    rows_of(path, static_cast<const uint64_t*>(x), static_cast<const uint64_t*>(w), shape, oh_begin, oh_end, scale,
            shift, sink, scratch);
}

// The lane weights (O, KH * KW) of a binary convolution reading lanes of `lane` bits, from pack_weights' sign
// plane (1, KH, KW, 1, lanes); refuses what the lane kernel cannot run.
at::Tensor lane_weights(const at::Tensor& sign, const ConvShape& s, int64_t lane) {
  check_lane_shape(s, lane);
  const int64_t taps = s.kh * s.kw, lanes_w = ceil_div64(s.out_ch, 8) * 8;
  TORCH_CHECK(sign.scalar_type() == at::kLong && sign.numel() == taps * lanes_w,
              "packed weights do not match the shape");
  const at::Tensor words = sign.reshape({taps, lanes_w}).t().slice(0, 0, s.out_ch).contiguous();  // (O, taps)
  return words.to(lane_dtype(lane));  // the low lane bits (the input channels) survive the narrowing
}

namespace {

at::Tensor lane_weights_py(const at::Tensor& sign, const std::vector<int64_t>& shape, int64_t lane) {
  return lane_weights(sign, to_shape(shape), lane);
}

// Sign bits of x * scale + shift (per channel) as pixel lanes of `lane` bits: (N, C, H, W) -> (N, H, W).
at::Tensor pack_lanes(const at::Tensor& x_in, int64_t lane, const std::optional<at::Tensor>& scale_in,
                      const std::optional<at::Tensor>& shift_in) {
  TORCH_CHECK(x_in.dim() == 4, "pack_lanes expects (N, C, H, W)");
  TORCH_CHECK(scale_in.has_value() == shift_in.has_value(), "give both scale and shift or neither");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t n = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  check_lane_width(lane, channels);
  const auto scale = checked_vector(scale_in, channels, "scale"), shift = checked_vector(shift_in, channels, "shift");
  const Value out{channels, height, width, false, static_cast<int>(lane), 1, 1};
  at::Tensor bits = at::empty({n, height, width}, x.options().dtype(lane_dtype(lane)));
  const float* xp = x.data_ptr<float>();
  auto* bp = static_cast<char*>(bits.data_ptr());
  const float *sp = data_or_null(scale), *tp = data_or_null(shift);
  at::parallel_for(0, n * height, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(width);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t img = r / height;
      const RowSink sink{nullptr, nullptr, bp + img * out.bits_bytes(), &out, sp, tp, false};
      pack_row(xp + img * channels * out.plane(), r % height, sink, row.data());
    }
  });
  return bits;
}

// Binary convolution of lane activations with lane weights (one group, stride 1) and the plan's epilogue:
// y = dot * scale[o] + shift[o] (+ residual) (ReLU), dot the +-1 sum over the taps inside the image. Returns
// [y (N, O, OH, OW) floats or empty, the next layer's pixel lanes of out_lane bits, sign(y * pack_scale +
// pack_shift) (N, OH, OW), or empty for out_lane 0].
std::vector<at::Tensor> lane_conv(const at::Tensor& x, const at::Tensor& weight, const std::vector<int64_t>& shape_in,
                                  const at::Tensor& scale_in, const at::Tensor& shift_in,
                                  const std::optional<at::Tensor>& residual_in, bool relu, bool out_float,
                                  int64_t out_lane, const std::optional<at::Tensor>& pack_scale_in,
                                  const std::optional<at::Tensor>& pack_shift_in, const std::string& path_name) {
  const ConvShape s = to_shape(shape_in);
  const Path path = parse_path(path_name);
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "x must be lane activations (N, H, W)");
  const int64_t in_lane = lane_of(x);
  check_lane_shape(s, in_lane);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.is_contiguous() &&
              weight.numel() == s.out_ch * s.kh * s.kw, "weight must be lane_weights of this shape and lane");
  const int64_t n = x.size(0), height = x.size(1), width = x.size(2);
  const int64_t out_h = height + 2 * s.ph - s.dh * (s.kh - 1), out_w = width + 2 * s.pw - s.dw * (s.kw - 1);
  TORCH_CHECK(out_h > 0 && out_w > 0, "convolution output would be empty");
  TORCH_CHECK(out_float || out_lane, "give floats, lanes or both");
  if (out_lane) check_lane_width(out_lane, s.out_ch);
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous(), shift = shift_in.to(at::kFloat).contiguous();
  TORCH_CHECK(scale.numel() == s.out_ch && shift.numel() == s.out_ch,
              "scale and shift need one value per output channel");
  std::optional<at::Tensor> residual;
  if (residual_in.has_value()) {
    TORCH_CHECK(residual_in->dim() == 4 && residual_in->size(0) == n && residual_in->size(1) == s.out_ch &&
                residual_in->size(2) == out_h && residual_in->size(3) == out_w, "residual must match the output");
    residual = residual_in->to(at::kFloat).contiguous();
  }
  TORCH_CHECK(pack_scale_in.has_value() == pack_shift_in.has_value(), "give both pack_scale and pack_shift or neither");
  const auto pack_scale = checked_vector(pack_scale_in, s.out_ch, "pack_scale");
  const auto pack_shift = checked_vector(pack_shift_in, s.out_ch, "pack_shift");

  const Value out{s.out_ch, out_h, out_w, out_float, static_cast<int>(out_lane), 1, 1};
  const auto fopts = scale.options();
  at::Tensor y = out_float ? at::empty({n, s.out_ch, out_h, out_w}, fopts) : at::empty({0}, fopts);
  at::Tensor bits = out_lane ? at::empty({n, out_h, out_w}, x.options().dtype(lane_dtype(out_lane)))
                             : at::empty({0}, x.options());
  const auto* xp = static_cast<const char*>(x.data_ptr());
  const void* wp = weight.data_ptr();
  float* yp = out_float ? y.data_ptr<float>() : nullptr;
  const float* rp = residual.has_value() ? residual->data_ptr<float>() : nullptr;
  auto* bp = out_lane ? static_cast<char*>(bits.data_ptr()) : nullptr;
  const float *sc = scale.data_ptr<float>(), *sh = shift.data_ptr<float>();
  const float *ps = data_or_null(pack_scale), *pt = data_or_null(pack_shift);
  const LaneShape lanes{s.in_ch, s.out_ch, height, width, s.kh, s.kw, s.ph, s.pw, s.dh, s.dw, out_w};
  const int64_t x_bytes = height * width * in_lane / 8, y_floats = s.out_ch * out.plane();
  at::parallel_for(0, n * out_h, 1, [&](int64_t begin, int64_t end) {
    LaneScratch scratch;
    for (int64_t r = begin; r < end;) {  // the chunk's rows, image by image
      const int64_t img = r / out_h, oh = r % out_h, stop = std::min(out_h, oh + end - r);
      const RowSink sink{yp ? yp + img * y_floats : nullptr, rp ? rp + img * y_floats : nullptr,
                         bp ? bp + img * out.bits_bytes() : nullptr, &out, ps, pt, relu};
      lane_conv_rows(path, static_cast<int>(in_lane), xp + img * x_bytes, wp, lanes, oh, stop, sc, sh, sink, scratch);
      r += stop - oh;
    }
  });
  return {y, bits};
}

}  // namespace

void register_lane_ops(pybind11::module& m) {
  m.def("lane_weights", &lane_weights_py, "a binary layer's weights as lanes (O, KH * KW) from its sign plane");
  m.def("pack_lanes", &pack_lanes, "sign bits of x * scale + shift as pixel lanes (N, H, W) of 16/32/64 bits");
  m.def("lane_conv", &lane_conv, "binary convolution on pixel lanes (the plan's kernel) with its epilogue");
}

}  // namespace deepshrink_bits
