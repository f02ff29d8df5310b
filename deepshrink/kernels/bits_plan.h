// The plan's row-level pieces (bits_rows.cpp), shared with the plan (bits_plan.cpp): a value's layout and
// where an output row goes; the epilogue of a binary layer's counts and the float convolution's rows.
#pragma once

#include <cstdint>
#include <vector>

#include "bits.h"

namespace deepshrink_bits {

inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Value {
  int64_t channels, height, width;
  bool has_float;
  int lane;                           // 0: no bits; 16/32: pixel lanes; 64: words
  int64_t groups, words;              // words per group (lane 64)
  const float *pack_scale = nullptr, *pack_shift = nullptr;  // per channel, held by the plan; null: identity
  int64_t float_offset = 0, bits_offset = 0;  // in the arena, bytes
  int64_t plane() const { return height * width; }
  int64_t bits_bytes() const { return lane ? plane() * groups * words * lane / 8 : 0; }
};

// Where one output row goes: y (C, OH, OW) floats, a residual of the same layout, packed bits.
struct RowSink {
  float* y;
  const float* residual;
  void* bits;
  const Value* out;
  const float *pack_scale, *pack_shift;
  bool relu;
};


// Output row oh of a binary layer: v = (valid - 2 * count) * scale[o] + shift[o], count of channel o at
// position i = counts[chan_offset[o] + i * pos_stride]; valid per position or per (position, channel).
void count_epilogue(const int32_t* counts, int64_t pos_stride, const int64_t* chan_offset, const int32_t* valid,
                    bool valid_per_channel, const float* scale, const float* shift, int64_t oh, const RowSink& sink,
                    float* v);
// Output row oh of a float layer: v = acc[i * O + o] * scale[o] + shift[o], then as count_epilogue.
void float_epilogue(const float* acc, const float* scale, const float* shift, int64_t oh, const RowSink& sink, float* v);
// Output row oh of the sink's bits from the floats of a value of the same shape (src, (C, H, W)).
void pack_row(const float* src, int64_t oh, const RowSink& sink, float* v);
// acc (out_w, O) = output row oh of a float convolution of one (C, H, W) image; w is (C/G, KH, KW, O).
void float_conv_row(const float* x, const Value& in, const float* w, const ConvShape& s, int64_t oh, int64_t out_w,
                    float* acc);

// Output row oh of a pixel-lane binary convolution (input as for LaneCountFn) with its epilogue in
// registers (bits_lane_rows.cpp): the floats and bits count_epilogue would write, without the counts.
template <typename T>
using LaneRowFn = void (*)(const T* x, const T* w, const LaneShape& shape, int64_t oh, const float* scale,
                           const float* shift, const RowSink& sink);
// The fused row for this path and output, or null (not the avx512 path, or bits in 64-channel words
// of more than one word or group): the caller then counts and runs count_epilogue.
template <typename T>
LaneRowFn<T> lane_row_fn(Path path, const Value& out);

// The generic lane route's scratch (counts, then count_epilogue), sized by lane_conv_rows when it takes that
// route: counts (out_ch * out_w), valid and row (out_w), and where channel o's counts start (o * out_w).
struct LaneScratch {
  std::vector<int32_t> counts, valid;
  std::vector<float> row;
  std::vector<int64_t> chan_offset;
  void size_for(int64_t out_ch, int64_t out_w) {  // a no-op when the last layer had this shape
    if (static_cast<int64_t>(chan_offset.size()) == out_ch && static_cast<int64_t>(valid.size()) == out_w) return;
    counts.resize(out_ch * out_w), valid.resize(out_w), row.resize(out_w), chan_offset.resize(out_ch);
    for (int64_t o = 0; o < out_ch; ++o) chan_offset[o] = o * out_w;
  }
};
// Output rows [oh_begin, oh_end) of a pixel-lane binary convolution of one image into the sink (bits_lane_ops.cpp):
// x and w as for LaneCountFn, of in_lane (16, 32 or 64) bits; the fused row where lane_row_fn has one, else
// counts then count_epilogue. The plan's lane op and the per-layer lane_conv both run this.
void lane_conv_rows(Path path, int in_lane, const void* x, const void* w, const LaneShape& shape, int64_t oh_begin,
                    int64_t oh_end, const float* scale, const float* shift, const RowSink& sink, LaneScratch& scratch);

// Output row oh of a float convolution (as float_conv_row) with its epilogue in registers
// (bits_float_rows.cpp): the floats and bits float_epilogue would write.
using FloatRowFn = void (*)(const float* x, const Value& in, const float* w, const ConvShape& s, int64_t oh,
                            const float* scale, const float* shift, const RowSink& sink);
// The fused row for this path, shape and output, or null (as lane_row_fn; also for groups > 1).
FloatRowFn float_row_fn(Path path, const ConvShape& s, const Value& out);

}  // namespace deepshrink_bits
