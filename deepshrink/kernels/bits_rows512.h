// The AVX-512 row epilogue shared by the fused rows (bits_lane_rows.cpp: binary convolution on pixel
// lanes; bits_float_rows.cpp: float convolution): a channel's floats of a vector of pixels get the
// residual and ReLU, are stored where the value keeps its floats, and their signs (after the next
// layer's input affine) become bit o of the output's pixel words, held in registers until every channel
// of the vector is done. Operation for operation the generic epilogue's arithmetic (bits_rows.cpp:
// multiply and add apart, no FMA), so both give the same floats and bits.
#pragma once

#include <type_traits>

#include "bits_lanes.h"
#include "bits_plan.h"

namespace deepshrink_bits {

struct NoBits {};  // an output that keeps no bits

// The output's bits as one word of 16/32/64 bits per pixel (bit o: channel o), none (0), or -1: 64-channel
// words of more than one word or group, which the fused rows leave to the generic epilogue.
inline int out_word_bits(const Value& out) {
  if (out.lane == 16 || out.lane == 32) return out.lane;
  if (out.lane == 64 && out.groups == 1 && out.channels <= 64) return 64;
  return out.lane == 0 ? 0 : -1;
}

struct RowEpilogue {
  const float *scale, *shift, *residual, *pack_scale, *pack_shift;  // residual: the vector's channel 0
  float* y;                                                           // null: floats not kept
  int64_t plane;                                                      // floats between channels
  bool relu;
  // The sink's pointers at output pixel `at` (row * width + column) of channel 0.
  RowEpilogue(const float* scale_, const float* shift_, const RowSink& sink, int64_t at)
      : scale(scale_), shift(shift_), residual(sink.residual ? sink.residual + at : nullptr),
        pack_scale(sink.pack_scale), pack_shift(sink.pack_shift), y(sink.y ? sink.y + at : nullptr),
        plane(sink.out->plane()), relu(sink.relu) {}
};

DS_LANES512 inline __mmask16 first_lanes(int count) {
  return count >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << count) - 1);
}

// Channel o's floats v = x * scale[o] + shift[o] at pixels [p0, p0 + 16) (lanes k) into the output;
// returns their sign bits (bit i: pixel p0 + i) when the output keeps bits.
DS_LANES512 inline uint32_t finish_vector(__m512 x, __mmask16 k, int p0, int64_t o, const RowEpilogue& e, bool bits) {
  __m512 v = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(e.scale[o])), _mm512_set1_ps(e.shift[o]));
  if (e.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, e.residual + o * e.plane + p0));
  if (e.relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);  // (0 > v) ? 0 : v, as std::max(v, 0.0f)
  if (e.y) _mm512_mask_storeu_ps(e.y + o * e.plane + p0, k, v);
  if (!bits) return 0;
  if (e.pack_scale) v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(e.pack_scale[o])), _mm512_set1_ps(e.pack_shift[o]));
  return _mm512_movepi32_mask(_mm512_castps_si512(v)) & k;
}

template <typename U>
constexpr int words_per_vector() {
  if constexpr (std::is_same<U, NoBits>::value) return 32;
  else return Lanes<U>::n;
}

// The output's pixel words of a vector of PIXELS pixels (at most 32), built in registers.
template <typename U, int PIXELS>
struct PixelWords {
  static constexpr int per = words_per_vector<U>(), count = (PIXELS + per - 1) / per;
  __m512i words[count];
  DS_LANES512 PixelWords() {
    for (int j = 0; j < count; ++j) words[j] = _mm512_setzero_si512();
  }
  DS_LANES512 void set(uint64_t signs, int64_t channel) {  // bit `channel` of the pixels in signs
    if constexpr (!std::is_same<U, NoBits>::value)
      for (int j = 0; j < count; ++j) words[j] = Lanes<U>::set_bit(words[j], signs >> (j * per), static_cast<int>(channel));
  }
  DS_LANES512 void store(const RowSink& sink, int64_t at, int n_pos) const {  // pixels [at, at + n_pos)
    if constexpr (!std::is_same<U, NoBits>::value) {
      U* out = static_cast<U*>(sink.bits) + at;
      for (int j = 0; j * per < n_pos; ++j) Lanes<U>::store_words(out + j * per, words[j], std::min(per, n_pos - j * per));
    }
  }
};

}  // namespace deepshrink_bits
