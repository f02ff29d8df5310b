// Pixel-lane rows with their epilogue in registers (AVX-512): one output row of a narrow binary layer
// (bits_lanes.cpp's input format) goes from the popcounts to the output floats and the next layer's sign
// bits without writing the counts out. The plan's generic route (lane counts, then count_epilogue and
// finish_channel in bits_rows.cpp) stores every count, reloads it per channel and ORs each channel's
// sign into the output words one channel at a time; at ResNet-20's sizes that traffic costs several
// times the popcounts themselves.
//
// Per vector of P pixels (32, 16 or 8 for 16, 32 or 64-bit input lanes) and block of 8 output channels:
// the popcounts accumulate in registers; d = valid - 2 * count goes to a small stack buffer as int32;
// each channel's floats are v = d * scale + shift (+ residual, ReLU), stored when the value keeps its
// floats, and their signs after the next layer's input affine become one mask bit per pixel, OR-ed into
// the output's pixel words (16, 32 or 64 bits: bit o is channel o) kept in registers until every channel
// is done. The arithmetic is the generic epilogue's, operation for operation (multiply and add apart,
// no FMA), so both routes give the same bits and floats.
#include <algorithm>

#include "bits_rows512.h"

namespace deepshrink_bits {

namespace {

// All lanes of a vector of d = valid - 2 * count as int32 (masked lanes hold garbage; nobody reads them).
template <typename T>
DS_LANES512 inline void store_d(int32_t* p, __m512i v) {
  if constexpr (sizeof(T) == 2) {
    _mm512_storeu_si512(p, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(v)));
    _mm512_storeu_si512(p + 16, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(v, 1)));
  } else if constexpr (sizeof(T) == 4) {
    _mm512_storeu_si512(p, v);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi64_epi32(v));
  }
}

// Output channels [o0, o0 + nb) (NB = nb = 8, or NB = 0) of the vector: counts, floats, sign bits.
template <typename T, typename U, int NB>
DS_LANES512 inline void channel_block(const LaneVector<T>& vec, const LaneTaps& taps, const T* w, const LaneShape& s,
                                      int64_t o0, int nb, __m512i valid, const RowEpilogue& e,
                                      PixelWords<U, Lanes<T>::n>& words) {
  using L = Lanes<T>;
  alignas(64) int32_t d[8][32];  // 32: read 16 at a time
  __m512i acc[8];
  vec.template count_block<NB>(taps, w + o0 * s.kh * s.kw, s.kh * s.kw, nb, acc);
  for (int b = 0; b < (NB ? NB : nb); ++b) store_d<T>(d[b], L::sub(valid, L::add(acc[b], acc[b])));
  for (int b = 0; b < (NB ? NB : nb); ++b) {
    uint64_t signs = 0;
    for (int p0 = 0; p0 < vec.n_pos; p0 += 16)
      signs |= uint64_t{finish_vector(_mm512_cvtepi32_ps(_mm512_loadu_si512(d[b] + p0)), first_lanes(vec.n_pos - p0), p0,
                                      o0 + b, e, !std::is_same<U, NoBits>::value)} << p0;
    words.set(signs, o0 + b);
  }
}

template <typename T, typename U>
DS_LANES512 void lane_row_avx512(const T* x, const T* w, const LaneShape& s, int64_t oh, const float* scale,
                                 const float* shift, const RowSink& sink) {
  const LaneTaps taps(s, oh);
  LaneVector<T> vec;
  for (int64_t ow0 = 0; ow0 < s.out_w; ow0 += Lanes<T>::n) {
    const __m512i valid = vec.prepare(x, s, taps, ow0);
    const RowEpilogue e(scale, shift, sink, oh * s.out_w + ow0);
    PixelWords<U, Lanes<T>::n> words;
    for (int64_t o0 = 0; o0 < s.out_ch; o0 += 8) {
      const int nb = static_cast<int>(std::min<int64_t>(8, s.out_ch - o0));
      if (nb == 8) channel_block<T, U, 8>(vec, taps, w, s, o0, nb, valid, e, words);
      else channel_block<T, U, 0>(vec, taps, w, s, o0, nb, valid, e, words);
    }
    words.store(sink, oh * s.out_w + ow0, vec.n_pos);
  }
}

template <typename T>
LaneRowFn<T> pick(int out_bits) {
  switch (out_bits) {
    case 0: return lane_row_avx512<T, NoBits>;
    case 16: return lane_row_avx512<T, uint16_t>;
    case 32: return lane_row_avx512<T, uint32_t>;
    case 64: return lane_row_avx512<T, uint64_t>;
    default: return nullptr;
  }
}

}  // namespace

template <typename T>
LaneRowFn<T> lane_row_fn(Path path, const Value& out) {
  const bool simd = path == Path::avx512 && (sizeof(T) > 2 || __builtin_cpu_supports("avx512bitalg"));
  return simd ? pick<T>(out_word_bits(out)) : nullptr;
}
template LaneRowFn<uint16_t> lane_row_fn<uint16_t>(Path, const Value&);
template LaneRowFn<uint32_t> lane_row_fn<uint32_t>(Path, const Value&);
template LaneRowFn<uint64_t> lane_row_fn<uint64_t>(Path, const Value&);

}  // namespace deepshrink_bits
