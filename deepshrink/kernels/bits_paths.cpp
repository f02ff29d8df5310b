// The three code paths of the bit kernels: AVX-512 (VPOPCNTDQ), AVX2 (vpshufb nibble popcount) and
// portable (__builtin_popcountll). The SIMD functions carry their own target attribute, so one binary
// built without -march holds all three and the caller picks one from the CPU's flags at run time.
//
// Every count kernel vectorises over output channels: one activation word is broadcast and compared
// with the same word of 8 (AVX-512) or 4 (AVX2) output channels' weights, so a 64-channel layer costs
// one xor + popcount + add per tap and 8 output channels, whatever its spatial size.
#include "bits.h"

#include <immintrin.h>

#include <cstring>

namespace deepshrink_bits {

bool cpu_supports(Path path) {
  switch (path) {
    case Path::portable:
      return true;
    case Path::avx2:
      return __builtin_cpu_supports("avx2");
    case Path::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  }
  return false;
}

// ------------------------------------------------------------------ portable
static void count_portable(const uint64_t* x, const uint64_t* w, const uint64_t* mask, const Steps& steps,
                           int n_blocks, const Positions& pos, int32_t* counts) {
  for (int b0 = 0; b0 < n_blocks; b0 += 8) {  // 64 output channels at a time
    const int lo = b0 * 8, hi = (n_blocks < b0 + 8 ? n_blocks : b0 + 8) * 8;
    for (int p = 0; p < pos.count; ++p) {
      const uint64_t* xp = x + p * pos.x_stride;
      int64_t acc[64] = {0};
      for (int s = 0; s < steps.count; ++s) {
        const uint64_t a = xp[steps.x_off[s]];
        const uint64_t* ws = w + steps.w_off[s];
        if (mask) {
          const uint64_t* ms = mask + steps.w_off[s];
          for (int l = lo; l < hi; ++l) acc[l - lo] += __builtin_popcountll((a ^ ws[l]) & ms[l]);
        } else {
          for (int l = lo; l < hi; ++l) acc[l - lo] += __builtin_popcountll(a ^ ws[l]);
        }
      }
      for (int l = lo; l < hi; ++l) counts[p * pos.counts_stride + l] = static_cast<int32_t>(acc[l - lo]);
    }
  }
}

static void pack_portable(const float* x, const float* scale, const float* shift, int64_t channels,
                          uint64_t* words) {
  const int64_t n_words = (channels + 63) / 64;
  for (int64_t k = 0; k < n_words; ++k) {
    uint64_t word = 0;
    const int64_t end = channels < (k + 1) * 64 ? channels : (k + 1) * 64;
    for (int64_t c = k * 64; c < end; ++c) {
      const float v = scale ? x[c] * scale[c] + shift[c] : x[c];
      uint32_t raw;
      std::memcpy(&raw, &v, 4);
      word |= static_cast<uint64_t>(raw >> 31) << (c - k * 64);
    }
    words[k] = word;
  }
}

// ------------------------------------------------------------------ AVX2
#define DS_AVX2 __attribute__((target("avx2")))

// Per-byte popcount of a 256-bit vector with the vpshufb nibble table (Mula et al. 2018).
DS_AVX2 static inline __m256i popcount_bytes_avx2(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
}

// Byte counters hold at most 8 per step; flushing them every 31 steps keeps them below 256.
template <int NB, bool TERNARY>
DS_AVX2 static void count_avx2_t(const uint64_t* x, const uint64_t* w, const uint64_t* mask, const Steps& steps,
                                 const Positions& pos, int32_t* counts) {
  constexpr int V = 2 * NB;  // 4 lanes of 64 bits per vector
  const __m256i zero = _mm256_setzero_si256();
  for (int p = 0; p < pos.count; ++p) {
    const uint64_t* xp = x + p * pos.x_stride;
    __m256i acc8[V], acc64[V];
    for (int v = 0; v < V; ++v) acc8[v] = acc64[v] = zero;
    int pending = 0;
    for (int s = 0; s < steps.count; ++s) {
      const __m256i a = _mm256_set1_epi64x(static_cast<long long>(xp[steps.x_off[s]]));
      const uint64_t* ws = w + steps.w_off[s];
      for (int v = 0; v < V; ++v) {
        __m256i d = _mm256_xor_si256(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ws + 4 * v)));
        if (TERNARY)
          d = _mm256_and_si256(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mask + steps.w_off[s] + 4 * v)));
        acc8[v] = _mm256_add_epi8(acc8[v], popcount_bytes_avx2(d));
      }
      if (++pending == 31) {
        for (int v = 0; v < V; ++v) {
          acc64[v] = _mm256_add_epi64(acc64[v], _mm256_sad_epu8(acc8[v], zero));
          acc8[v] = zero;
        }
        pending = 0;
      }
    }
    int32_t* out = counts + p * pos.counts_stride;
    for (int v = 0; v < V; ++v) {
      acc64[v] = _mm256_add_epi64(acc64[v], _mm256_sad_epu8(acc8[v], zero));
      // the four 64-bit sums fit 32 bits: gather their low halves into one 128-bit store
      const __m256i low = _mm256_permutevar8x32_epi32(acc64[v], _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * v), _mm256_castsi256_si128(low));
    }
  }
}

template <bool TERNARY>
DS_AVX2 static void count_avx2_blocks(const uint64_t* x, const uint64_t* w, const uint64_t* mask,
                                      const Steps& steps, int n_blocks, const Positions& pos, int32_t* counts) {
  for (int b = 0; b < n_blocks;) {
    const int64_t shift = 8 * b;
    const uint64_t* mb = TERNARY ? mask + shift : nullptr;
    if (n_blocks - b >= 2) {
      count_avx2_t<2, TERNARY>(x, w + shift, mb, steps, pos, counts + shift);
      b += 2;
    } else {
      count_avx2_t<1, TERNARY>(x, w + shift, mb, steps, pos, counts + shift);
      b += 1;
    }
  }
}

DS_AVX2 static void count_avx2(const uint64_t* x, const uint64_t* w, const uint64_t* mask, const Steps& steps,
                               int n_blocks, const Positions& pos, int32_t* counts) {
  if (mask) count_avx2_blocks<true>(x, w, mask, steps, n_blocks, pos, counts);
  else count_avx2_blocks<false>(x, w, mask, steps, n_blocks, pos, counts);
}

DS_AVX2 static void pack_avx2(const float* x, const float* scale, const float* shift, int64_t channels,
                              uint64_t* words) {
  const int64_t n_words = (channels + 63) / 64;
  const int64_t full = channels / 8 * 8;
  for (int64_t k = 0; k < n_words; ++k) words[k] = 0;
  for (int64_t c = 0; c < full; c += 8) {
    __m256 v = _mm256_loadu_ps(x + c);
    if (scale) v = _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(scale + c)), _mm256_loadu_ps(shift + c));
    const uint64_t bits = static_cast<uint32_t>(_mm256_movemask_ps(v));
    words[c / 64] |= bits << (c % 64);
  }
  if (full < channels) {
    uint64_t tail[1];
    pack_portable(x + full, scale ? scale + full : nullptr, shift ? shift + full : nullptr, channels - full, tail);
    words[full / 64] |= tail[0] << (full % 64);
  }
}

// ------------------------------------------------------------------ AVX-512
#define DS_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,avx2")))

template <int NB, bool TERNARY>
DS_AVX512 static void count_avx512_t(const uint64_t* x, const uint64_t* w, const uint64_t* mask,
                                     const Steps& steps, const Positions& pos, int32_t* counts) {
  for (int p = 0; p < pos.count; ++p) {
    const uint64_t* xp = x + p * pos.x_stride;
    __m512i acc[NB];
    for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_si512();
    for (int s = 0; s < steps.count; ++s) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(xp[steps.x_off[s]]));
      const uint64_t* ws = w + steps.w_off[s];
      for (int b = 0; b < NB; ++b) {
        __m512i d = _mm512_xor_si512(a, _mm512_loadu_si512(ws + 8 * b));
        if (TERNARY) d = _mm512_and_si512(d, _mm512_loadu_si512(mask + steps.w_off[s] + 8 * b));
        acc[b] = _mm512_add_epi64(acc[b], _mm512_popcnt_epi64(d));
      }
    }
    int32_t* out = counts + p * pos.counts_stride;
    for (int b = 0; b < NB; ++b)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8 * b), _mm512_cvtepi64_epi32(acc[b]));
  }
}

template <bool TERNARY>
DS_AVX512 static void count_avx512_blocks(const uint64_t* x, const uint64_t* w, const uint64_t* mask,
                                          const Steps& steps, int n_blocks, const Positions& pos,
                                          int32_t* counts) {
  for (int b = 0; b < n_blocks;) {
    const int64_t shift = 8 * b;
    const uint64_t* mb = TERNARY ? mask + shift : nullptr;
    const int left = n_blocks - b;
    if (left >= 8) {
      count_avx512_t<8, TERNARY>(x, w + shift, mb, steps, pos, counts + shift);
      b += 8;
    } else if (left >= 4) {
      count_avx512_t<4, TERNARY>(x, w + shift, mb, steps, pos, counts + shift);
      b += 4;
    } else if (left >= 2) {
      count_avx512_t<2, TERNARY>(x, w + shift, mb, steps, pos, counts + shift);
      b += 2;
    } else {
      count_avx512_t<1, TERNARY>(x, w + shift, mb, steps, pos, counts + shift);
      b += 1;
    }
  }
}

DS_AVX512 static void count_avx512(const uint64_t* x, const uint64_t* w, const uint64_t* mask, const Steps& steps,
                                   int n_blocks, const Positions& pos, int32_t* counts) {
  if (mask) count_avx512_blocks<true>(x, w, mask, steps, n_blocks, pos, counts);
  else count_avx512_blocks<false>(x, w, mask, steps, n_blocks, pos, counts);
}

// Multiply and add stay separate (no FMA, built with -ffp-contract=off) so every path rounds alike.
// 16 sign bits per step straight from the float sign bits (vpmovd2m); the tail is a masked load.
DS_AVX512 static void pack_avx512(const float* x, const float* scale, const float* shift, int64_t channels,
                                  uint64_t* words) {
  const int64_t n_words = (channels + 63) / 64;
  for (int64_t k = 0; k < n_words; ++k) words[k] = 0;
  for (int64_t c = 0; c < channels; c += 16) {
    const int64_t left = channels - c;
    const __mmask16 keep = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
    __m512 v = _mm512_maskz_loadu_ps(keep, x + c);
    if (scale) v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(keep, scale + c)), _mm512_maskz_loadu_ps(keep, shift + c));
    const uint64_t bits = static_cast<uint64_t>(_mm512_movepi32_mask(_mm512_castps_si512(v)) & keep);
    words[c / 64] |= bits << (c % 64);
  }
}

CountFn count_fn(Path path) {
  switch (path) {
    case Path::avx512: return count_avx512;
    case Path::avx2: return count_avx2;
    default: return count_portable;
  }
}

PackFn pack_fn(Path path) {
  switch (path) {
    case Path::avx512: return pack_avx512;
    case Path::avx2: return pack_avx2;
    default: return pack_portable;
  }
}

}  // namespace deepshrink_bits
