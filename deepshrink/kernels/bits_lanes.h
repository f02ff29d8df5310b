// The pixel-lane kernels' shared pieces (bits_lanes.cpp counts, bits_lane_rows.cpp fuses the epilogue):
// which taps of an output row fall inside the image, and on AVX-512 the lane traits, each vector's tap
// masks and the popcount accumulation of a block of output channels.
#pragma once

#include <immintrin.h>

#include <algorithm>

#include "bits.h"

namespace deepshrink_bits {

// Taps of output row oh whose input row lies inside the image; their columns for output column 0.
struct LaneTaps {
  int64_t row_start[64], col0[64];
  int tap_id[64];
  int count = 0;
  LaneTaps(const LaneShape& s, int64_t oh) {
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh - s.ph + i * s.dh;
      if (ih < 0 || ih >= s.height) continue;
      for (int64_t j = 0; j < s.kw; ++j) {
        row_start[count] = ih * s.width, col0[count] = -s.pw + j * s.dw;
        tap_id[count++] = static_cast<int>(i * s.kw + j);
      }
    }
  }
};

#define DS_LANES512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,avx512bitalg,avx2,bmi2")))

// A vector of n pixels' lanes: masked load, broadcast, popcount, add; store lanes as int32 counts. As the
// output of bits_lane_rows.cpp: set bit `bit` in the lanes of mask m, store the first `count` lanes.
template <typename T>
struct Lanes;
template <>
struct Lanes<uint16_t> {
  static constexpr int n = 32;
  using Mask = __mmask32;
  DS_LANES512 static __m512i load(Mask k, const uint16_t* p) { return _mm512_maskz_loadu_epi16(k, p); }
  DS_LANES512 static __m512i set1(uint16_t v) { return _mm512_set1_epi16(static_cast<short>(v)); }
  DS_LANES512 static __m512i popcnt(Mask k, __m512i v) { return _mm512_maskz_popcnt_epi16(k, v); }
  DS_LANES512 static __m512i add(__m512i a, __m512i b) { return _mm512_add_epi16(a, b); }
  DS_LANES512 static __m512i sub(__m512i a, __m512i b) { return _mm512_sub_epi16(a, b); }
  DS_LANES512 static void store(int32_t* p, __m512i v, int count) {  // lanes [0, count) as int32
    const __m512i lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(v));
    const __m512i hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(v, 1));
    _mm512_mask_storeu_epi32(p, static_cast<__mmask16>(count >= 16 ? 0xffff : (1u << count) - 1), lo);
    if (count > 16) _mm512_mask_storeu_epi32(p + 16, static_cast<__mmask16>(count >= 32 ? 0xffff : (1u << (count - 16)) - 1), hi);
  }
  DS_LANES512 static __m512i set_bit(__m512i v, uint64_t m, int bit) {
    // no masked OR at 16 bits; bit `bit` is still clear in every word, so adding it sets it
    return _mm512_mask_add_epi16(v, static_cast<Mask>(m), v, _mm512_set1_epi16(static_cast<short>(1u << bit)));
  }
  DS_LANES512 static void store_words(uint16_t* p, __m512i v, int count) {
    _mm512_mask_storeu_epi16(p, static_cast<Mask>((uint64_t{1} << count) - 1), v);
  }
};
template <>
struct Lanes<uint32_t> {
  static constexpr int n = 16;
  using Mask = __mmask16;
  DS_LANES512 static __m512i load(Mask k, const uint32_t* p) { return _mm512_maskz_loadu_epi32(k, p); }
  DS_LANES512 static __m512i set1(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  DS_LANES512 static __m512i popcnt(Mask k, __m512i v) { return _mm512_maskz_popcnt_epi32(k, v); }
  DS_LANES512 static __m512i add(__m512i a, __m512i b) { return _mm512_add_epi32(a, b); }
  DS_LANES512 static __m512i sub(__m512i a, __m512i b) { return _mm512_sub_epi32(a, b); }
  DS_LANES512 static void store(int32_t* p, __m512i v, int count) {
    _mm512_mask_storeu_epi32(p, static_cast<__mmask16>(count >= 16 ? 0xffff : (1u << count) - 1), v);
  }
  DS_LANES512 static __m512i set_bit(__m512i v, uint64_t m, int bit) {
    return _mm512_mask_or_epi32(v, static_cast<Mask>(m), v, _mm512_set1_epi32(static_cast<int>(1u << bit)));
  }
  DS_LANES512 static void store_words(uint32_t* p, __m512i v, int count) {
    _mm512_mask_storeu_epi32(p, static_cast<Mask>((uint64_t{1} << count) - 1), v);
  }
};
template <>
struct Lanes<uint64_t> {
  static constexpr int n = 8;
  using Mask = __mmask8;
  DS_LANES512 static __m512i load(Mask k, const uint64_t* p) { return _mm512_maskz_loadu_epi64(k, p); }
  DS_LANES512 static __m512i set1(uint64_t v) { return _mm512_set1_epi64(static_cast<long long>(v)); }
  DS_LANES512 static __m512i popcnt(Mask k, __m512i v) { return _mm512_maskz_popcnt_epi64(k, v); }
  DS_LANES512 static __m512i add(__m512i a, __m512i b) { return _mm512_add_epi64(a, b); }
  DS_LANES512 static __m512i sub(__m512i a, __m512i b) { return _mm512_sub_epi64(a, b); }
  DS_LANES512 static void store(int32_t* p, __m512i v, int count) {
    _mm256_mask_storeu_epi32(p, static_cast<__mmask8>(count >= 8 ? 0xff : (1u << count) - 1), _mm512_cvtepi64_epi32(v));
  }
  DS_LANES512 static __m512i set_bit(__m512i v, uint64_t m, int bit) {
    return _mm512_mask_or_epi64(v, static_cast<Mask>(m), v, _mm512_set1_epi64(static_cast<long long>(uint64_t{1} << bit)));
  }
  DS_LANES512 static void store_words(uint64_t* p, __m512i v, int count) {
    _mm512_mask_storeu_epi64(p, static_cast<Mask>((uint64_t{1} << count) - 1), v);
  }
};

// One vector of pixels [ow0, ow0 + n_pos) of a row: per tap, which lanes read inside the image and where
// they read; the valid +-1 products per pixel (in_ch per tap inside the image) as the return value.
template <typename T>
struct LaneVector {
  typename Lanes<T>::Mask masks[64];
  const T* ptr[64];
  int n_pos;
  DS_LANES512 __m512i prepare(const T* x, const LaneShape& s, const LaneTaps& taps, int64_t ow0) {
    using L = Lanes<T>;
    const T in_bits = static_cast<T>(s.in_ch >= 64 ? ~uint64_t{0} : (uint64_t{1} << s.in_ch) - 1);
    n_pos = static_cast<int>(std::min<int64_t>(L::n, s.out_w - ow0));
    __m512i valid = _mm512_setzero_si512();
    for (int t = 0; t < taps.count; ++t) {  // lane l reads column ow0 + l + col0; it counts inside the image
      const int64_t first = ow0 + taps.col0[t];
      const int64_t lo = std::max<int64_t>(0, -first), hi = std::min<int64_t>(n_pos, s.width - first);
      uint64_t bits = 0;
      if (hi > lo) bits = (hi - lo >= 64 ? ~uint64_t{0} : ((uint64_t{1} << (hi - lo)) - 1)) << lo;
      masks[t] = static_cast<typename L::Mask>(bits);
      ptr[t] = x + taps.row_start[t] + first;  // masked lanes are never read
      valid = L::add(valid, L::popcnt(masks[t], L::set1(in_bits)));
    }
    return valid;
  }

  // acc[b] = popcounts of output channel b < nb (weights wb + b * kernel_taps, one T per tap) over the taps;
  // each tap's load serves the block's channels. NB = 8, or 0 for a runtime nb: a constant trip count,
  // in the caller too, lets the compiler keep the sums in registers.
  template <int NB>
  DS_LANES512 void count_block(const LaneTaps& taps, const T* wb, int64_t kernel_taps, int nb, __m512i* acc) const {
    using L = Lanes<T>;
    for (int b = 0; b < 8; ++b) acc[b] = _mm512_setzero_si512();
    for (int t = 0; t < taps.count; ++t) {
      const __m512i a = L::load(masks[t], ptr[t]);
      for (int b = 0; b < (NB ? NB : nb); ++b)
        acc[b] = L::add(acc[b], L::popcnt(masks[t], _mm512_xor_si512(a, L::set1(wb[b * kernel_taps + taps.tap_id[t]]))));
    }
  }
};

}  // namespace deepshrink_bits
