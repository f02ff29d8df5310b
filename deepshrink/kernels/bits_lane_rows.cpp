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
#include <type_traits>

#include "bits_lanes.h"
#include "bits_plan.h"

namespace deepshrink_bits {

namespace {

struct NoBits {};

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
}  // the output keeps no bits

struct Epilogue {
  const float *scale, *shift, *residual, *pack_scale, *pack_shift;  // residual: the row's channel 0
  float* y;                                                           // null: floats not kept
  int64_t plane;                                                      // floats between channels
  bool relu;
};

// Channel o's floats at pixels [0, n_pos) of the vector from d; returns the sign mask (bit i: pixel i).
DS_LANES512 inline uint64_t channel_floats(const int32_t* d, int n_pos, int64_t o, const Epilogue& e, bool want_bits) {
  const __m512 mul = _mm512_set1_ps(e.scale[o]), add = _mm512_set1_ps(e.shift[o]), zero = _mm512_setzero_ps();
  uint64_t signs = 0;
  for (int p0 = 0; p0 < n_pos; p0 += 16) {
    const int left = n_pos - p0;
    const __mmask16 k = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
    __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(d + p0)), mul), add);
    if (e.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, e.residual + o * e.plane + p0));
    if (e.relu) v = _mm512_max_ps(zero, v);  // (0 > v) ? 0 : v, as std::max(v, 0.0f): -0.0 stays -0.0
    if (e.y) _mm512_mask_storeu_ps(e.y + o * e.plane + p0, k, v);
    if (want_bits) {
      if (e.pack_scale) v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(e.pack_scale[o])), _mm512_set1_ps(e.pack_shift[o]));
      signs |= static_cast<uint64_t>(_mm512_movepi32_mask(_mm512_castps_si512(v)) & k) << p0;
    }
  }
  return signs;
}

template <typename U, int PIXELS>
DS_LANES512 inline void set_bits(__m512i* words, uint64_t signs, int bit) {
  constexpr int per = Lanes<U>::n;
  for (int j = 0; j < (PIXELS + per - 1) / per; ++j) words[j] = Lanes<U>::set_bit(words[j], signs >> (j * per), bit);
}

template <typename T, typename U>
DS_LANES512 void lane_row_avx512(const T* x, const T* w, const LaneShape& s, int64_t oh, const float* scale,
                                 const float* shift, const RowSink& sink) {
  using L = Lanes<T>;
  constexpr bool kBits = !std::is_same<U, NoBits>::value;
  const LaneTaps taps(s, oh);
  LaneVector<T> vec;
  const int64_t row = oh * s.out_w, plane = sink.out->plane();
  alignas(64) int32_t d[8][32];  // 32: channel_floats reads 16 at a time
  for (int64_t ow0 = 0; ow0 < s.out_w; ow0 += L::n) {
    const __m512i valid = vec.prepare(x, s, taps, ow0);
    const Epilogue e{scale, shift, sink.residual ? sink.residual + row + ow0 : nullptr, sink.pack_scale,
                     sink.pack_shift, sink.y ? sink.y + row + ow0 : nullptr, plane, sink.relu};
    __m512i words[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int64_t o0 = 0; o0 < s.out_ch; o0 += 8) {
      const int nb = static_cast<int>(std::min<int64_t>(8, s.out_ch - o0));
      __m512i acc[8];
      vec.count_block(taps, w + o0 * s.kh * s.kw, s.kh * s.kw, nb, acc);
      for (int b = 0; b < nb; ++b) store_d<T>(d[b], L::sub(valid, L::add(acc[b], acc[b])));
      for (int b = 0; b < nb; ++b) {
        const uint64_t signs = channel_floats(d[b], vec.n_pos, o0 + b, e, kBits);
        if constexpr (kBits) set_bits<U, L::n>(words, signs, static_cast<int>(o0 + b));
      }
    }
    if constexpr (kBits) {
      U* out = static_cast<U*>(sink.bits) + row + ow0;
      for (int j = 0; j * Lanes<U>::n < vec.n_pos; ++j)
        Lanes<U>::store_words(out + j * Lanes<U>::n, words[j], std::min(Lanes<U>::n, vec.n_pos - j * Lanes<U>::n));
    }
  }
}

// The output's bits as one word of 16/32/64 bits per pixel (bit o: channel o), or none.
int out_word_bits(const Value& out) {
  if (out.lane == 16 || out.lane == 32) return out.lane;
  if (out.lane == 64 && out.groups == 1 && out.channels <= 64) return 64;
  return out.lane == 0 ? 0 : -1;
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
