// Pixel-lane counts: the kernel for narrow binary layers (at most 64 input channels, stride 1, one
// group), where packing 64 channels to a word would leave most of each word empty (a 16-channel layer
// wastes 48 of 64 bits). Each pixel's input channels fill one lane of 16, 32 or 64 bits, and a vector
// holds consecutive pixels of a row: one xor + popcount + add handles 32 (16-bit lanes), 16 or 8
// pixels of one output channel and one tap. The lanes' sign bits sit in memory as a (H, W) array of
// uint16/32/64, so a tap's operand is one unaligned load at the tap's column offset; the lanes that
// fall on the zero padding are masked out of the popcount (and of the valid count).
#include <algorithm>

#include "bits_lanes.h"

namespace deepshrink_bits {

// ------------------------------------------------------------------ portable (and the AVX2 path)
template <typename T>
static void lane_count_portable(const T* x, const T* w, const LaneShape& s, int64_t oh, int32_t* counts,
                                int32_t* valid) {
  const LaneTaps tp(s, oh);
  const int n_taps = tp.count;
  const int64_t *row_start = tp.row_start, *col0 = tp.col0;
  const int* tap_id = tp.tap_id;
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
// Counts of output channels [o0, o0 + nb) (NB = nb = 8, or NB = 0) for the vector at ow0.
template <typename T, int NB>
DS_LANES512 static inline void count_channels(const LaneVector<T>& vec, const LaneTaps& taps, const T* w,
                                              const LaneShape& s, int64_t o0, int nb, int64_t ow0, int32_t* counts) {
  __m512i acc[8];
  vec.template count_block<NB>(taps, w + o0 * s.kh * s.kw, s.kh * s.kw, nb, acc);
  for (int b = 0; b < (NB ? NB : nb); ++b) Lanes<T>::store(counts + (o0 + b) * s.out_w + ow0, acc[b], vec.n_pos);
}

// Output channels in blocks of 8 accumulators, so that each tap's load serves 8 channels.
template <typename T>
DS_LANES512 static void lane_count_avx512(const T* x, const T* w, const LaneShape& s, int64_t oh, int32_t* counts,
                                          int32_t* valid) {
  using L = Lanes<T>;
  const LaneTaps taps(s, oh);
  LaneVector<T> vec;
  for (int64_t ow0 = 0; ow0 < s.out_w; ow0 += L::n) {
    const __m512i valid_here = vec.prepare(x, s, taps, ow0);  // sets vec.n_pos
    L::store(valid + ow0, valid_here, vec.n_pos);
    for (int64_t o0 = 0; o0 < s.out_ch; o0 += 8) {
      const int nb = static_cast<int>(std::min<int64_t>(8, s.out_ch - o0));
      if (nb == 8) count_channels<T, 8>(vec, taps, w, s, o0, nb, ow0, counts);
      else count_channels<T, 0>(vec, taps, w, s, o0, nb, ow0, counts);
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
