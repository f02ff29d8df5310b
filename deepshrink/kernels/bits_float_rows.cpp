// Float convolution rows with their epilogue in registers (AVX-512), for the plan's float layers (a
// binary ResNet's first convolution and its 1x1 downsample projections). The generic row
// (bits_rows.cpp) vectorises over output channels, so its sums come out pixel-major and its epilogue
// reads them back one channel at a time with a stride; here a vector holds 16 output pixels of one
// channel, 16 channels' sums stay in registers through every tap, and the epilogue (bits_rows512.h)
// writes the (C, H, W) floats and the next binary layer's pixel words straight from them.
//
// Each sum adds the products in the generic row's order (taps (i, j), then input channels) with the
// multiply and add apart, and a lane whose tap falls on the padding is left out of the add (masked), as
// the generic row skips it: the floats are the same to the bit.
#include <algorithm>

#include "bits_rows512.h"

namespace deepshrink_bits {

namespace {

// One tap (i, j) of a vector of 16 output pixels: where lane 0 reads, which lanes read inside the image
// and, for stride 2, the lanes of the two loads that hold the even elements.
struct FloatTap {
  int64_t offset;
  int64_t weight;  // (i * kw + j) * out_ch: the tap's weights for input channel 0
  __mmask16 lanes, low, high;
};

// x at lanes l of 16: p[l * stride], lanes outside `tap.lanes` zero.
DS_LANES512 inline __m512 load_pixels(const float* p, const FloatTap& tap, int64_t stride, __m512i index) {
  if (stride == 1) return _mm512_maskz_loadu_ps(tap.lanes, p);
  if (stride == 2) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(tap.low, p), even, _mm512_maskz_loadu_ps(tap.high, p + 16));
  }
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), tap.lanes, index, p, 4);
}

// Output channels [o0, o0 + nb) (NB = nb = 16, or NB = 0) of the vector: sums, floats, sign bits.
template <typename U, int NB>
DS_LANES512 inline void channel_block(const float* x, int64_t plane, const float* w, const ConvShape& s,
                                      const FloatTap* taps, int n_taps, int64_t o0, int nb, __m512i index, int n_pos,
                                      const RowEpilogue& e, PixelWords<U, 16>& words) {
  const int64_t weights_per_channel = s.kh * s.kw * s.out_ch;
  __m512 acc[16];
  for (int b = 0; b < 16; ++b) acc[b] = _mm512_setzero_ps();
  for (int t = 0; t < n_taps; ++t)
    for (int64_t c = 0; c < s.in_ch; ++c) {
      const __m512 xv = load_pixels(x + c * plane + taps[t].offset, taps[t], s.sw, index);
      const float* wr = w + c * weights_per_channel + taps[t].weight + o0;
      for (int b = 0; b < (NB ? NB : nb); ++b)
        acc[b] = _mm512_mask_add_ps(acc[b], taps[t].lanes, acc[b], _mm512_mul_ps(_mm512_set1_ps(wr[b]), xv));
    }
  alignas(64) float sums[16][16];  // the epilogue's loop is not unrolled: sums indexed there live in memory
  for (int b = 0; b < (NB ? NB : nb); ++b) _mm512_store_ps(sums[b], acc[b]);
  for (int b = 0; b < (NB ? NB : nb); ++b)
    words.set(finish_vector(_mm512_load_ps(sums[b]), first_lanes(n_pos), 0, o0 + b, e, !std::is_same<U, NoBits>::value),
              o0 + b);
}

template <typename U>
DS_LANES512 void float_row_avx512(const float* x, const Value& in, const float* w, const ConvShape& s, int64_t oh,
                                  const float* scale, const float* shift, const RowSink& sink) {
  const int64_t out_w = sink.out->width;
  const __m512i index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int>(s.sw)));
  FloatTap taps[64];
  for (int64_t ow0 = 0; ow0 < out_w; ow0 += 16) {
    const int n_pos = static_cast<int>(std::min<int64_t>(16, out_w - ow0));
    int n_taps = 0;
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh * s.sh - s.ph + i * s.dh;
      if (ih < 0 || ih >= in.height) continue;
      for (int64_t j = 0; j < s.kw; ++j) {
        const int64_t column = ow0 * s.sw - s.pw + j * s.dw;  // lane 0's
        uint32_t lanes = 0;
        for (int l = 0; l < n_pos; ++l)
          lanes |= uint32_t{column + l * s.sw >= 0 && column + l * s.sw < in.width} << l;
        if (!lanes) continue;
        const uint32_t low = _pdep_u32(lanes & 0xff, 0x5555), high = _pdep_u32(lanes >> 8, 0x5555);
        taps[n_taps++] = {ih * in.width + column, (i * s.kw + j) * s.out_ch, static_cast<__mmask16>(lanes),
                          static_cast<__mmask16>(low), static_cast<__mmask16>(high)};
      }
    }
    const RowEpilogue e(scale, shift, sink, oh * out_w + ow0);
    PixelWords<U, 16> words;
    for (int64_t o0 = 0; o0 < s.out_ch; o0 += 16) {
      const int nb = static_cast<int>(std::min<int64_t>(16, s.out_ch - o0));
      if (nb == 16) channel_block<U, 16>(x, in.plane(), w, s, taps, n_taps, o0, nb, index, n_pos, e, words);
      else channel_block<U, 0>(x, in.plane(), w, s, taps, n_taps, o0, nb, index, n_pos, e, words);
    }
    words.store(sink, oh * out_w + ow0, n_pos);
  }
}

}  // namespace

FloatRowFn float_row_fn(Path path, const ConvShape& s, const Value& out) {
  if (path != Path::avx512 || s.groups != 1 || s.kh * s.kw > 64 || !__builtin_cpu_supports("bmi2")) return nullptr;
  switch (out_word_bits(out)) {
    case 0: return float_row_avx512<NoBits>;
    case 16: return float_row_avx512<uint16_t>;
    case 32: return float_row_avx512<uint32_t>;
    case 64: return float_row_avx512<uint64_t>;
    default: return nullptr;
  }
}

}  // namespace deepshrink_bits
