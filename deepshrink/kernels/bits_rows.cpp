// Row-level pieces of the native plan (declared in bits_plan.h): the epilogue that turns one output row's
// counts into floats (scale, shift, residual, ReLU) and the next binary layer's sign bits, and the float
// convolution's rows. Cloned per instruction set (target_clones) like the per-layer epilogue; multiply
// and add stay separate (-ffp-contract=off), so every clone rounds alike.
#include <algorithm>
#include <cstring>

#include "bits_plan.h"

namespace deepshrink_bits {

// bits[i * STRIDE + word] |= sign(v[i] * ps[o] + pt[o]) << bit; a compile-time stride of 1 (pixel lanes,
// one word per pixel) and affine flag let the loop vectorise.
template <typename T, bool AFFINE, int STRIDE>
inline void or_sign_bits(const float* __restrict v, int64_t n, const float* ps, const float* pt, int64_t o,
                         T* __restrict bits, int64_t stride, int64_t word, int bit) {
  const int64_t step = STRIDE ? STRIDE : stride;
  const float mul = AFFINE ? ps[o] : 1.0f, add = AFFINE ? pt[o] : 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float u = AFFINE ? v[i] * mul + add : v[i];
    uint32_t raw;
    std::memcpy(&raw, &u, 4);
    bits[i * step + word] |= static_cast<T>(raw >> 31) << bit;
  }
}

template <typename T>
inline void or_signs(const float* v, int64_t n, const RowSink& k, int64_t o, T* bits, int64_t stride, int64_t word,
                     int bit) {
  if (k.pack_scale && stride == 1) or_sign_bits<T, true, 1>(v, n, k.pack_scale, k.pack_shift, o, bits, 1, word, bit);
  else if (k.pack_scale) or_sign_bits<T, true, 0>(v, n, k.pack_scale, k.pack_shift, o, bits, stride, word, bit);
  else if (stride == 1) or_sign_bits<T, false, 1>(v, n, nullptr, nullptr, o, bits, 1, word, bit);
  else or_sign_bits<T, false, 0>(v, n, nullptr, nullptr, o, bits, stride, word, bit);
}

// Channel o's row v (n values, before the residual and ReLU) of output row oh into the sink.
static inline void finish_channel(float* v, int64_t o, int64_t oh, const RowSink& k) {
  const Value& out = *k.out;
  const int64_t n = out.width, at = o * out.plane() + oh * n;
  float* y = k.y ? k.y + at : v;  // may be v itself: every loop reads and writes element i only
  const float* __restrict r = k.residual ? k.residual + at : nullptr;
  if (r && k.relu)
    for (int64_t i = 0; i < n; ++i) y[i] = std::max(v[i] + r[i], 0.0f);
  else if (r)
    for (int64_t i = 0; i < n; ++i) y[i] = v[i] + r[i];
  else if (k.relu)
    for (int64_t i = 0; i < n; ++i) y[i] = std::max(v[i], 0.0f);
  else if (k.y)
    std::memcpy(y, v, n * sizeof(float));
  if (!k.bits) return;
  const int64_t row = oh * n;
  if (out.lane == 16) or_signs(y, n, k, o, static_cast<uint16_t*>(k.bits) + row, 1, 0, static_cast<int>(o));
  else if (out.lane == 32) or_signs(y, n, k, o, static_cast<uint32_t*>(k.bits) + row, 1, 0, static_cast<int>(o));
  else {
    const int64_t group_channels = out.channels / out.groups, g = o / group_channels, c = o % group_channels;
    const int64_t stride = out.groups * out.words;
    or_signs(y, n, k, o, static_cast<uint64_t*>(k.bits) + row * stride, stride, g * out.words + c / 64,
             static_cast<int>(c % 64));
  }
}

static inline void clear_bits_row(const RowSink& k, int64_t oh) {
  if (!k.bits) return;
  const int64_t bytes = k.out->bits_bytes() / k.out->height;
  std::memset(static_cast<char*>(k.bits) + oh * bytes, 0, bytes);
}

// Output row oh of a binary layer from its counts: v = (valid - 2 * count) * scale[o] + shift[o]. Cloned
// per instruction set like the per-layer epilogue; multiply and add stay separate (-ffp-contract=off).
__attribute__((target_clones("avx512f", "avx2", "default")))
void count_epilogue(const int32_t* __restrict counts, int64_t pos_stride, const int64_t* chan_offset,
                    const int32_t* __restrict valid, bool valid_per_channel, const float* scale, const float* shift,
                    int64_t oh, const RowSink& sink, float* __restrict v) {
  const int64_t out_ch = sink.out->channels, n = sink.out->width;
  clear_bits_row(sink, oh);
  for (int64_t o = 0; o < out_ch; ++o) {
    const int32_t* cnt = counts + chan_offset[o];
    if (valid_per_channel)
      for (int64_t i = 0; i < n; ++i)
        v[i] = static_cast<float>(valid[i * out_ch + o] - 2 * cnt[i * pos_stride]) * scale[o] + shift[o];
    else if (pos_stride == 1)  // pixel lanes: a channel's counts are contiguous, so the loop vectorises
      for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(valid[i] - 2 * cnt[i]) * scale[o] + shift[o];
    else
      for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(valid[i] - 2 * cnt[i * pos_stride]) * scale[o] + shift[o];
    finish_channel(v, o, oh, sink);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void float_epilogue(const float* __restrict acc, const float* scale, const float* shift, int64_t oh,
                    const RowSink& sink, float* __restrict v) {
  const int64_t out_ch = sink.out->channels, n = sink.out->width;
  clear_bits_row(sink, oh);
  for (int64_t o = 0; o < out_ch; ++o) {
    for (int64_t i = 0; i < n; ++i) v[i] = acc[i * out_ch + o] * scale[o] + shift[o];
    finish_channel(v, o, oh, sink);
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void pack_row(const float* __restrict src, int64_t oh, const RowSink& sink, float* __restrict v) {
  const Value& out = *sink.out;
  clear_bits_row(sink, oh);
  for (int64_t o = 0; o < out.channels; ++o) {
    std::memcpy(v, src + o * out.plane() + oh * out.width, out.width * sizeof(float));
    finish_channel(v, o, oh, sink);
  }
}

// Direct convolution of one (C, H, W) image, one output row at a time: acc (OW, O) sums over the valid
// taps (i, j) and input channels c, vectorised over output channels (w is (C/G, KH, KW, O)). OUT > 0: one
// group of OUT output channels, whose sums stay in registers through a pixel's taps.
template <int OUT>
inline void float_conv_row_t(const float* __restrict x, const Value& in, const float* __restrict w, const ConvShape& s,
                             int64_t oh, int64_t out_w, float* __restrict acc) {
  const int64_t groups = OUT ? 1 : s.groups, group_in = s.in_ch / groups, group_out = OUT ? OUT : s.out_ch / groups;
  const int64_t out_ch = s.out_ch;
  for (int64_t ow = 0; ow < out_w; ++ow) {
    float sum[OUT ? OUT : 1] = {};
    float* a = OUT ? sum : acc + ow * out_ch;
    if (!OUT) std::fill(a, a + out_ch, 0.0f);
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh * s.sh - s.ph + i * s.dh;
      if (ih < 0 || ih >= in.height) continue;
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t iw = ow * s.sw - s.pw + j * s.dw;
        if (iw < 0 || iw >= in.width) continue;
        for (int64_t g = 0; g < groups; ++g)
          for (int64_t c = 0; c < group_in; ++c) {
            const float xv = x[(g * group_in + c) * in.plane() + ih * in.width + iw];
            const float* wr = w + ((c * s.kh + i) * s.kw + j) * out_ch + g * group_out;
            float* ag = a + g * group_out;
            for (int64_t o = 0; o < group_out; ++o) ag[o] += wr[o] * xv;
          }
      }
    }
    if (OUT) std::memcpy(acc + ow * out_ch, sum, OUT * sizeof(float));
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void float_conv_row(const float* __restrict x, const Value& in, const float* __restrict w, const ConvShape& s,
                    int64_t oh, int64_t out_w, float* __restrict acc) {
  const bool one_group = s.groups == 1;
  if (one_group && s.out_ch == 16) float_conv_row_t<16>(x, in, w, s, oh, out_w, acc);
  else if (one_group && s.out_ch == 32) float_conv_row_t<32>(x, in, w, s, oh, out_w, acc);
  else if (one_group && s.out_ch == 64) float_conv_row_t<64>(x, in, w, s, oh, out_w, acc);
  else float_conv_row_t<0>(x, in, w, s, oh, out_w, acc);
}

}  // namespace deepshrink_bits
