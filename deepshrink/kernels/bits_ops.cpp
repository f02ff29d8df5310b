// Drivers of the bit kernels: packing activations and weights, and binary/ternary convolution on
// packed operands with its epilogue fused (per-channel multiply-add, residual, ReLU, and the next
// binary layer's sign packed straight from the output). Linear layers run as 1x1 convolutions on a
// 1x1 image. The per-path inner loops live in bits_paths.cpp.
//
// Layouts (all contiguous):
//   packed activations  (N, H, W, G * words)        int64, words = ceil(C / G / 64) per group
//   packed weights      (G, KH, KW, words, lanes)   int64, lanes = output channels of a group rounded
//                                                   up to 8; bit c % 64 of word c / 64 is input channel c
//   float activations   (N, C, H, W) in channels_last memory format
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "bits.h"

namespace deepshrink_bits {

Path parse_path(const std::string& name) {
  Path path;
  if (name == "avx512") path = Path::avx512;
  else if (name == "avx2") path = Path::avx2;
  else if (name == "portable") path = Path::portable;
  else TORCH_CHECK(false, "unknown bit-kernel path '", name, "'; one of avx512, avx2, portable");
  TORCH_CHECK(cpu_supports(path), "this CPU cannot run the ", name, " bit-kernel path");
  return path;
}

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// An optional per-channel vector's floats (null when absent); the vector checked for n values, as floats.
const float* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

std::optional<at::Tensor> checked_vector(const std::optional<at::Tensor>& t, int64_t n, const char* what) {
  if (!t.has_value()) return t;
  TORCH_CHECK(t->numel() == n, what, " has ", t->numel(), " values, expected ", n);
  return t->to(at::kFloat).contiguous();
}

std::vector<std::string> supported_paths() {
  std::vector<std::string> names;
  if (cpu_supports(Path::avx512)) names.push_back("avx512");
  if (cpu_supports(Path::avx2)) names.push_back("avx2");
  names.push_back("portable");
  return names;
}

// Sign bits of x * scale + shift (per channel), packed per group of C / groups channels.
at::Tensor pack_activations_on(const at::Tensor& x_in, int64_t groups, const std::optional<at::Tensor>& scale_in,
                               const std::optional<at::Tensor>& shift_in, Path path) {
  TORCH_CHECK(x_in.dim() == 4 || x_in.dim() == 2, "pack_activations expects (N, C, H, W) or (N, C)");
  TORCH_CHECK(scale_in.has_value() == shift_in.has_value(), "give both scale and shift or neither");
  at::Tensor x = x_in.dim() == 2 ? x_in.reshape({x_in.size(0), x_in.size(1), 1, 1}) : x_in;
  x = x.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  TORCH_CHECK(groups >= 1 && channels % groups == 0, "channels ", channels, " not divisible by groups ", groups);
  const int64_t group_channels = channels / groups, words = ceil_div(group_channels, 64);
  const auto scale = checked_vector(scale_in, channels, "scale");
  const auto shift = checked_vector(shift_in, channels, "shift");
  at::Tensor out = at::empty({n, height, width, groups * words}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  const float *sp = data_or_null(scale), *tp = data_or_null(shift);
  auto* op = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const PackFn pack = pack_fn(path);
  at::parallel_for(0, n * height * width, 64, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t c0 = g * group_channels;
        pack(xp + p * channels + c0, sp ? sp + c0 : nullptr, tp ? tp + c0 : nullptr, group_channels,
             op + (p * groups + g) * words);
      }
  });
  return out;
}

at::Tensor pack_activations(const at::Tensor& x, int64_t groups, const std::optional<at::Tensor>& scale,
                            const std::optional<at::Tensor>& shift, const std::string& path) {
  return pack_activations_on(x, groups, scale, shift, parse_path(path));
}

// Weight bit planes from integer codes (O, C/G, KH, KW) or (O, C/G): binary codes {0, 1} (1 = +1) give
// one sign plane; ternary codes {-1, 0, 1} give a sign plane, a non-zero mask plane and the number of
// non-zero weights per (output channel, tap), which the convolution needs at image borders.
std::vector<at::Tensor> pack_weights(const at::Tensor& codes_in, int64_t groups, bool ternary) {
  at::Tensor codes = codes_in.dim() == 2 ? codes_in.reshape({codes_in.size(0), codes_in.size(1), 1, 1}) : codes_in;
  TORCH_CHECK(codes.dim() == 4, "weight codes must be (O, C/G, KH, KW) or (O, C/G)");
  codes = codes.to(at::kLong).contiguous();
  const int64_t out_ch = codes.size(0), group_channels = codes.size(1), kh = codes.size(2), kw = codes.size(3);
  TORCH_CHECK(groups >= 1 && out_ch % groups == 0, "output channels ", out_ch, " not divisible by groups ", groups);
  const int64_t group_out = out_ch / groups, lanes = ceil_div(group_out, 8) * 8;
  const int64_t words = ceil_div(group_channels, 64), taps = kh * kw;
  const auto opts = codes.options().dtype(at::kLong);
  at::Tensor sign = at::zeros({groups, kh, kw, words, lanes}, opts);
  at::Tensor mask = ternary ? at::zeros_like(sign) : at::empty({0}, opts);
  at::Tensor tap_nonzero = ternary ? at::zeros({out_ch, taps}, opts.dtype(at::kInt)) : at::empty({0}, opts);
  const int64_t* cp = codes.data_ptr<int64_t>();
  auto* sp = reinterpret_cast<uint64_t*>(sign.data_ptr<int64_t>());
  auto* mp = ternary ? reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()) : nullptr;
  int32_t* np = ternary ? tap_nonzero.data_ptr<int32_t>() : nullptr;
  for (int64_t o = 0; o < out_ch; ++o) {
    const int64_t g = o / group_out, lane = o % group_out;
    for (int64_t c = 0; c < group_channels; ++c)
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t code = cp[(o * group_channels + c) * taps + t];
        TORCH_CHECK(ternary ? (code >= -1 && code <= 1) : (code == 0 || code == 1), "weight code ", code,
                    " out of range for ", ternary ? "ternary" : "binary", " weights");
        const int64_t index = ((g * taps + t) * words + c / 64) * lanes + lane;
        const uint64_t bit = uint64_t{1} << (c % 64);
        if (ternary) {
          if (code == -1) sp[index] |= bit;
          if (code != 0) { mp[index] |= bit; np[o * taps + t] += 1; }
        } else if (code == 0) {
          sp[index] |= bit;
        }
      }
  }
  return {sign, mask, tap_nonzero};
}

// One output row: y[p, o] = (valid - 2 * count[p, o]) * scale[o] + shift[o] (+ residual[p, o]), then
// ReLU. valid is per position (binary weights) or per (position, channel) (ternary); counts hold
// `lanes` slots per group and `pos_stride` per position; y and residual are (positions, channels).
// Cloned per instruction set (picked by the CPU, like glibc's memcpy): without -march the default
// clone is SSE2. Multiply and add stay separate (-ffp-contract=off), so every clone rounds alike.
__attribute__((target_clones("avx512f", "avx2", "default")))
void epilogue(const int32_t* __restrict counts, int64_t pos_stride, const int32_t* __restrict valid,
              bool valid_per_channel, int64_t n_pos, int64_t groups, int64_t group_out, int64_t lanes,
              const float* __restrict scale, const float* __restrict shift, const float* __restrict residual,
              bool relu, float* __restrict y) {
  const int64_t out_ch = groups * group_out;
  for (int64_t p = 0; p < n_pos; ++p) {
    float* yp = y + p * out_ch;
    for (int64_t g = 0; g < groups; ++g) {
      const int32_t* cnt = counts + p * pos_stride + g * lanes;
      const int64_t o0 = g * group_out;
      if (valid_per_channel) {
        const int32_t* v = valid + p * out_ch + o0;
        for (int64_t o = 0; o < group_out; ++o)
          yp[o0 + o] = static_cast<float>(v[o] - 2 * cnt[o]) * scale[o0 + o] + shift[o0 + o];
      } else {
        const int32_t v = valid[p];
        for (int64_t o = 0; o < group_out; ++o)
          yp[o0 + o] = static_cast<float>(v - 2 * cnt[o]) * scale[o0 + o] + shift[o0 + o];
      }
    }
    if (residual)
      for (int64_t o = 0; o < out_ch; ++o) yp[o] += residual[p * out_ch + o];
    if (relu)
      for (int64_t o = 0; o < out_ch; ++o) yp[o] = yp[o] < 0.0f ? 0.0f : yp[o];
  }
}

RowGeometry row_geometry(const ConvShape& s, int64_t height, int64_t width, int64_t out_w) {
  RowGeometry g;
  g.height = height, g.width = width, g.out_w = out_w;
  g.words = ceil_div(s.in_ch / s.groups, 64);
  g.lanes = ceil_div(s.out_ch / s.groups, 8) * 8;
  g.pos_counts = s.groups * g.lanes;
  // output columns whose taps all fall inside the image share one tap list: one kernel call per run
  g.inner_lo = std::min(out_w, ceil_div(s.pw, s.sw));
  const int64_t last_start = width - 1 + s.pw - (s.kw - 1) * s.dw;  // the largest ow * sw with all taps inside
  g.inner_hi = last_start < 0 ? g.inner_lo : std::max(g.inner_lo, std::min(out_w, last_start / s.sw + 1));
  return g;
}

RowScratch::RowScratch(const ConvShape& s, int64_t out_w)
    : x_off(s.kh * s.kw * ceil_div(s.in_ch / s.groups, 64)), w_off(x_off.size()), tap_id(s.kh * s.kw),
      counts(out_w * s.groups * ceil_div(s.out_ch / s.groups, 8) * 8), valid(out_w * s.out_ch) {}

void count_row(const uint64_t* x_img, const uint64_t* wp, const uint64_t* mp, const int32_t* nz, const ConvShape& s,
               const RowGeometry& geo, int64_t oh, CountFn count, RowScratch& scratch) {
  const int64_t x_words = s.groups * geo.words, taps_all = s.kh * s.kw;
  const int64_t group_weights = taps_all * geo.words * geo.lanes, group_channels = s.in_ch / s.groups;
  // one call for the interior run [inner_lo, inner_hi), one per border column
  for (int64_t ow = 0; ow < geo.out_w;) {
    const bool run = ow == geo.inner_lo && geo.inner_hi > geo.inner_lo;
    const int64_t n_pos = run ? geo.inner_hi - geo.inner_lo : 1;
    int n_taps = 0, n_steps = 0;
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh * s.sh - s.ph + i * s.dh;
      if (ih < 0 || ih >= geo.height) continue;
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t iw = ow * s.sw - s.pw + j * s.dw;
        if (iw < 0 || iw >= geo.width) continue;
        scratch.tap_id[n_taps++] = i * s.kw + j;
        for (int64_t k = 0; k < geo.words; ++k, ++n_steps) {
          scratch.x_off[n_steps] = (ih * geo.width + iw) * x_words + k;
          scratch.w_off[n_steps] = ((i * s.kw + j) * geo.words + k) * geo.lanes;
        }
      }
    }
    const Steps steps{scratch.x_off.data(), scratch.w_off.data(), n_steps};
    const Positions positions{static_cast<int>(n_pos), s.sw * x_words, geo.pos_counts};
    for (int64_t g = 0; g < s.groups; ++g)
      count(x_img + g * geo.words, wp + g * group_weights, mp ? mp + g * group_weights : nullptr, steps,
            static_cast<int>(geo.lanes / 8), positions, scratch.counts.data() + ow * geo.pos_counts + g * geo.lanes);
    if (!nz) {
      for (int64_t p = 0; p < n_pos; ++p)
        scratch.valid[ow + p] = static_cast<int32_t>(group_channels * n_taps);  // every channel of every valid tap
    } else {  // the run's positions share their taps: count non-zero weights once
      int32_t* first = scratch.valid.data() + ow * s.out_ch;
      for (int64_t o = 0; o < s.out_ch; ++o) {
        int32_t v = 0;
        for (int t = 0; t < n_taps; ++t) v += nz[o * taps_all + scratch.tap_id[t]];
        first[o] = v;
      }
      for (int64_t p = 1; p < n_pos; ++p) std::copy(first, first + s.out_ch, first + p * s.out_ch);
    }
    ow += n_pos;
  }
}

// Binary (or ternary) convolution of packed activations with packed weights. For output channel o at
// an output position with valid taps T: dot = valid(T) - 2 * popcount, valid(T) = (C/G) * |T| for
// binary weights and the non-zero weights under T for ternary ones, so zero padding contributes 0.
// Epilogue: y = dot * scale[o] + shift[o] (+ residual) (ReLU); returns [float y or empty, packed
// sign(y * pack_scale + pack_shift) over pack_groups or empty].
std::vector<at::Tensor> conv_on(const at::Tensor& x, const at::Tensor& sign, const at::Tensor& mask,
                                const at::Tensor& tap_nonzero, const ConvShape& s, const at::Tensor& scale_in,
                                const at::Tensor& shift_in, const std::optional<at::Tensor>& residual_in, bool relu,
                                bool out_float, int64_t pack_groups, const std::optional<at::Tensor>& pack_scale_in,
                                const std::optional<at::Tensor>& pack_shift_in, Path path) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kLong && x.is_contiguous(), "x must be packed activations");
  const bool ternary = mask.numel() > 0;
  const int64_t n = x.size(0), height = x.size(1), width = x.size(2), x_words = x.size(3);
  const int64_t group_channels = s.in_ch / s.groups, words = ceil_div(group_channels, 64);
  TORCH_CHECK(x_words == s.groups * words, "packed input has ", x_words, " words per position, expected ",
              s.groups * words);
  const int64_t group_out = s.out_ch / s.groups, lanes = ceil_div(group_out, 8) * 8, taps_all = s.kh * s.kw;
  TORCH_CHECK(sign.numel() == s.groups * taps_all * words * lanes, "packed weights do not match the shape");
  const int64_t out_h = (height + 2 * s.ph - s.dh * (s.kh - 1) - 1) / s.sh + 1;
  const int64_t out_w = (width + 2 * s.pw - s.dw * (s.kw - 1) - 1) / s.sw + 1;
  TORCH_CHECK(out_h > 0 && out_w > 0, "convolution output would be empty");
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous(), shift = shift_in.to(at::kFloat).contiguous();
  TORCH_CHECK(scale.numel() == s.out_ch && shift.numel() == s.out_ch, "scale and shift need one value per output channel");
  std::optional<at::Tensor> residual;
  if (residual_in.has_value()) {
    TORCH_CHECK(residual_in->dim() == 4 && residual_in->size(0) == n && residual_in->size(1) == s.out_ch &&
                residual_in->size(2) == out_h && residual_in->size(3) == out_w, "residual must match the output");
    residual = residual_in->to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
  }
  const bool packing = pack_groups > 0;
  TORCH_CHECK(!packing || s.out_ch % pack_groups == 0, "pack_groups must divide the output channels");
  const int64_t pack_channels = packing ? s.out_ch / pack_groups : 0, pack_words = ceil_div(pack_channels, 64);
  const auto pack_scale = checked_vector(pack_scale_in, s.out_ch, "pack_scale");
  const auto pack_shift = checked_vector(pack_shift_in, s.out_ch, "pack_shift");

  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor y = out_float ? at::empty({n, s.out_ch, out_h, out_w}, fopts.memory_format(at::MemoryFormat::ChannelsLast))
                           : at::empty({0}, fopts);
  at::Tensor packed = packing ? at::empty({n, out_h, out_w, pack_groups * pack_words}, x.options())
                              : at::empty({0}, x.options());
  const auto* xp = reinterpret_cast<const uint64_t*>(x.data_ptr<int64_t>());
  const auto* wp = reinterpret_cast<const uint64_t*>(sign.data_ptr<int64_t>());
  const auto* mp = ternary ? reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()) : nullptr;
  const int32_t* nz = ternary ? tap_nonzero.data_ptr<int32_t>() : nullptr;
  const float *sc = scale.data_ptr<float>(), *sh = shift.data_ptr<float>();
  const float* rp = residual.has_value() ? residual->data_ptr<float>() : nullptr;
  const float *ps = data_or_null(pack_scale), *pt = data_or_null(pack_shift);
  float* yp = out_float ? y.data_ptr<float>() : nullptr;
  auto* pp = packing ? reinterpret_cast<uint64_t*>(packed.data_ptr<int64_t>()) : nullptr;
  const CountFn count = count_fn(path);
  const PackFn pack = pack_fn(path);

  const RowGeometry geo = row_geometry(s, height, width, out_w);
  at::parallel_for(0, n * out_h, 1, [&](int64_t begin, int64_t end) {
    RowScratch scratch(s, out_w);
    std::vector<float> row(yp ? 0 : out_w * s.out_ch);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t img = r / out_h, oh = r % out_h;
      count_row(xp + img * height * width * x_words, wp, mp, nz, s, geo, oh, count, scratch);
      const int32_t* counts = scratch.counts.data();
      const int32_t* valid = scratch.valid.data();
      const int64_t pos0 = r * out_w;
      float* target = yp ? yp + pos0 * s.out_ch : row.data();
      epilogue(counts, geo.pos_counts, valid, nz != nullptr, out_w, s.groups, group_out, lanes, sc, sh,
               rp ? rp + pos0 * s.out_ch : nullptr, relu, target);
      if (pp)
        for (int64_t ow = 0; ow < out_w; ++ow)
          for (int64_t g = 0; g < pack_groups; ++g) {
            const int64_t c0 = g * pack_channels;
            pack(target + ow * s.out_ch + c0, ps ? ps + c0 : nullptr, pt ? pt + c0 : nullptr, pack_channels,
                 pp + ((pos0 + ow) * pack_groups + g) * pack_words);
          }
    }
  });
  return {y, packed};
}

ConvShape to_shape(const std::vector<int64_t>& a) {
  TORCH_CHECK(a.size() == 11, "shape is (C, O, KH, KW, SH, SW, PH, PW, DH, DW, G)");
  return ConvShape{a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10]};
}

std::vector<at::Tensor> conv(const at::Tensor& x, const at::Tensor& sign, const at::Tensor& mask,
                             const at::Tensor& tap_nonzero, const std::vector<int64_t>& shape,
                             const at::Tensor& scale, const at::Tensor& shift,
                             const std::optional<at::Tensor>& residual, bool relu, bool out_float,
                             int64_t pack_groups, const std::optional<at::Tensor>& pack_scale,
                             const std::optional<at::Tensor>& pack_shift, const std::string& path) {
  return conv_on(x, sign, mask, tap_nonzero, to_shape(shape), scale, shift, residual, relu, out_float, pack_groups,
                 pack_scale, pack_shift, parse_path(path));
}

// A layer with everything but its input fixed: one Python-to-C++ call per layer at run time
// (packing the float input, one or two plane sets, the fused epilogue), instead of one per step.
class BitConvPlan {
 public:
  BitConvPlan(const std::vector<int64_t>& shape, std::vector<std::vector<at::Tensor>> planes,
              std::vector<at::Tensor> scales, at::Tensor shift, std::optional<at::Tensor> in_scale,
              std::optional<at::Tensor> in_shift, bool packed_input, bool relu, bool out_float, int64_t pack_groups,
              std::optional<at::Tensor> pack_scale, std::optional<at::Tensor> pack_shift, bool linear,
              const std::string& path)
      : shape_(to_shape(shape)), planes_(std::move(planes)), scales_(std::move(scales)), shift_(std::move(shift)),
        zeros_(at::zeros_like(shift_)), in_scale_(std::move(in_scale)), in_shift_(std::move(in_shift)),
        packed_input_(packed_input), relu_(relu), out_float_(out_float), pack_groups_(pack_groups),
        pack_scale_(std::move(pack_scale)), pack_shift_(std::move(pack_shift)), linear_(linear),
        path_(parse_path(path)) {
    TORCH_CHECK(!planes_.empty() && planes_.size() == scales_.size(), "one scale per plane set");
    for (const auto& p : planes_) TORCH_CHECK(p.size() == 3, "a plane set is (sign, mask, tap_nonzero)");
  }

  at::Tensor run(const at::Tensor& x, const std::optional<at::Tensor>& residual_in) const {
    at::Tensor bits = packed_input_ ? x : pack_activations_on(x, shape_.groups, in_scale_, in_shift_, path_);
    std::optional<at::Tensor> residual = residual_in;
    if (linear_ && residual.has_value()) residual = residual->reshape({residual->size(0), -1, 1, 1});
    std::vector<at::Tensor> out;
    for (size_t i = 0; i < planes_.size(); ++i) {
      const bool last = i + 1 == planes_.size();  // the second plane set (TTQ) adds to the first's output
      out = conv_on(bits, planes_[i][0], planes_[i][1], planes_[i][2], shape_, scales_[i], last ? shift_ : zeros_,
                    residual, relu_ && last, out_float_ || !last, last ? pack_groups_ : 0, pack_scale_, pack_shift_,
                    path_);
      residual = out[0];
    }
    if (!out_float_) return out[1];
    return linear_ ? out[0].reshape({out[0].size(0), -1}) : out[0];
  }

 private:
  ConvShape shape_;
  std::vector<std::vector<at::Tensor>> planes_;
  std::vector<at::Tensor> scales_;
  at::Tensor shift_, zeros_;
  std::optional<at::Tensor> in_scale_, in_shift_;
  bool packed_input_, relu_, out_float_;
  int64_t pack_groups_;
  std::optional<at::Tensor> pack_scale_, pack_shift_;
  bool linear_;
  Path path_;
};

void register_net_plan(pybind11::module& m);   // bits_plan.cpp
void register_lane_ops(pybind11::module& m);   // bits_lane_ops.cpp

}  // namespace deepshrink_bits

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace deepshrink_bits;
  register_net_plan(m);
  register_lane_ops(m);
  m.def("supported_paths", &supported_paths, "bit-kernel paths this CPU can run, fastest first");
  m.def("pack_activations", &pack_activations, "sign bits of x * scale + shift, 64 channels per word");
  m.def("pack_weights", &pack_weights, "weight bit planes from binary or ternary codes");
  m.def("conv", &conv, "binary/ternary convolution on packed operands with a fused epilogue");
  pybind11::class_<BitConvPlan>(m, "BitConvPlan", "a binary layer's fixed operands; run(x, residual)")
      .def(pybind11::init<const std::vector<int64_t>&, std::vector<std::vector<at::Tensor>>, std::vector<at::Tensor>,
                          at::Tensor, std::optional<at::Tensor>, std::optional<at::Tensor>, bool, bool, bool, int64_t,
                          std::optional<at::Tensor>, std::optional<at::Tensor>, bool, const std::string&>())
      .def("run", &BitConvPlan::run);
}
