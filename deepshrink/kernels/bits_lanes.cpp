// Pixel-lane counts: the kernel for narrow binary layers (at most 64 input channels, stride 1, one
// group), where packing 64 channels to a word would leave most of each word empty (a 16-channel layer
// wastes 48 of 64 bits). Each pixel's input channels fill one lane of 16, 32 or 64 bits, and a vector
// holds consecutive pixels of a row: one xor + popcount + add handles 32 (16-bit lanes), 16 or 8
// pixels of one output channel and one tap. The lanes' sign bits sit in memory as a (H, W) array of
// uint16/32/64, so a tap's operand is one unaligned load at the tap's column offset; the lanes that
// fall on the zero padding are masked out of the popcount (and of the valid count).
#include "bits.h"

#include <immintrin.h>

#include <algorithm>

namespace deepshrink_bits {

// Taps of output row `oh` whose input row lies inside the image; their columns for output column 0.
static int row_taps(const LaneShape& s, int64_t oh, int64_t* row_start, int64_t* col0, int* tap_id) {
  int n = 0;
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t ih = oh - s.ph + i * s.dh;
    if (ih < 0 || ih >= s.height) continue;
    for (int64_t j = 0; j < s.kw; ++j) {
      row_start[n] = ih * s.width;
      col0[n] = -s.pw + j * s.dw;
      tap_id[n++] = static_cast<int>(i * s.kw + j);
    }
  }
  return n;
}

// ------------------------------------------------------------------ portable (and the AVX2 path)
template <typename T>
static void lane_count_portable(const T* x, const T* w, const LaneShape& s, int64_t oh, int32_t* counts,
                                int32_t* valid) {
  int64_t row_start[64], col0[64];
  int tap_id[64];
  const int n_taps = row_taps(s, oh, row_start, col0, tap_id);
  const int64_t taps = s.kh * s.kw;
  for (int64_t ow = 0; ow < s.out_w; ++ow) {
    int32_t v = 0;
    for (int t = 0; t < n_taps; ++t) {
      const int64_t iw = ow + col0[t];
      v += (iw >= 0 && iw < s.width) ? static_cast<int32_t>(s.in_ch) : 0;
    }
    valid[ow] = v;
  }
  for (int64_t o = 0; o < s.out_ch; ++o) {
    int32_t* out = counts + o * s.out_w;
    const T* wo = w + o * taps;
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      int32_t c = 0;
      for (int t = 0; t < n_taps; ++t) {
        const int64_t iw = ow + col0[t];
        if (iw >= 0 && iw < s.width) c += __builtin_popcountll(static_cast<uint64_t>(x[row_start[t] + iw] ^ wo[tap_id[t]]));
      }
      out[ow] = c;
    }
  }
}

// ------------------------------------------------------------------ AVX-512 (BITALG for 16-bit lanes)
#define DS_LANES512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,avx512bitalg,avx2")))

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
  DS_LANES512 static void store(int32_t* p, __m512i v, int count) {  // lanes [0, count) as int32
    const __m512i lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(v));
    const __m512i hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(v, 1));
    _mm512_mask_storeu_epi32(p, static_cast<__mmask16>(count >= 16 ? 0xffff : (1u << count) - 1), lo);
    if (count > 16) _mm512_mask_storeu_epi32(p + 16, static_cast<__mmask16>(count >= 32 ? 0xffff : (1u << (count - 16)) - 1), hi);
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
  DS_LANES512 static void store(int32_t* p, __m512i v, int count) {
    _mm512_mask_storeu_epi32(p, static_cast<__mmask16>(count >= 16 ? 0xffff : (1u << count) - 1), v);
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
  DS_LANES512 static void store(int32_t* p, __m512i v, int count) {
    _mm256_mask_storeu_epi32(p, static_cast<__mmask8>(count >= 8 ? 0xff : (1u << count) - 1), _mm512_cvtepi64_epi32(v));
  }
};

// Output channels in blocks of 8 accumulators, so that each tap's load serves 8 channels.
template <typename T>
DS_LANES512 static void lane_count_avx512(const T* x, const T* w, const LaneShape& s, int64_t oh, int32_t* counts,
                                          int32_t* valid) {
  using L = Lanes<T>;
  int64_t row_start[64], col0[64];
  int tap_id[64];
  typename L::Mask masks[64];
  const T* ptr[64];
  const int n_taps = row_taps(s, oh, row_start, col0, tap_id);
  const int64_t taps = s.kh * s.kw;
  const T in_bits = static_cast<T>(s.in_ch >= 64 ? ~uint64_t{0} : (uint64_t{1} << s.in_ch) - 1);
  for (int64_t ow0 = 0; ow0 < s.out_w; ow0 += L::n) {
    const int n_pos = static_cast<int>(std::min<int64_t>(L::n, s.out_w - ow0));
    __m512i count_valid = _mm512_setzero_si512();
    for (int t = 0; t < n_taps; ++t) {
      // lane l reads column ow0 + l + col0; it counts when that column is inside the image
      const int64_t first = ow0 + col0[t];
      const int64_t lo = std::max<int64_t>(0, -first), hi = std::min<int64_t>(n_pos, s.width - first);
      uint64_t bits = 0;
      if (hi > lo) bits = (hi - lo >= 64 ? ~uint64_t{0} : ((uint64_t{1} << (hi - lo)) - 1)) << lo;
      masks[t] = static_cast<typename L::Mask>(bits);
      ptr[t] = x + row_start[t] + first;  // masked lanes are never read
      count_valid = L::add(count_valid, L::popcnt(masks[t], L::set1(in_bits)));
    }
    L::store(valid + ow0, count_valid, n_pos);
    for (int64_t o0 = 0; o0 < s.out_ch; o0 += 8) {
      const int nb = static_cast<int>(std::min<int64_t>(8, s.out_ch - o0));
      __m512i acc[8];
      for (int b = 0; b < 8; ++b) acc[b] = _mm512_setzero_si512();
      const T* wb = w + o0 * taps;
      if (nb == 8) {
        for (int t = 0; t < n_taps; ++t) {
          const __m512i a = L::load(masks[t], ptr[t]);
          for (int b = 0; b < 8; ++b)
            acc[b] = L::add(acc[b], L::popcnt(masks[t], _mm512_xor_si512(a, L::set1(wb[b * taps + tap_id[t]]))));
        }
      } else {
        for (int t = 0; t < n_taps; ++t) {
          const __m512i a = L::load(masks[t], ptr[t]);
          for (int b = 0; b < nb; ++b)
            acc[b] = L::add(acc[b], L::popcnt(masks[t], _mm512_xor_si512(a, L::set1(wb[b * taps + tap_id[t]]))));
        }
      }
      for (int b = 0; b < nb; ++b) L::store(counts + (o0 + b) * s.out_w + ow0, acc[b], n_pos);
    }
  }
}

template <typename T>
LaneCountFn<T> lane_count_fn(Path path) {
  // 16-bit popcounts need BITALG besides the avx512 path's VPOPCNTDQ
  const bool simd = path == Path::avx512 && (sizeof(T) > 2 || __builtin_cpu_supports("avx512bitalg"));
  return simd ? lane_count_avx512<T> : lane_count_portable<T>;
}
template LaneCountFn<uint16_t> lane_count_fn<uint16_t>(Path);
template LaneCountFn<uint32_t> lane_count_fn<uint32_t>(Path);
template LaneCountFn<uint64_t> lane_count_fn<uint64_t>(Path);

}  // namespace deepshrink_bits
