// Shared declarations of the bit kernels: the per-path micro-kernels (bits_paths.cpp) and the
// drivers that walk a convolution's geometry and apply the epilogue (bits_ops.cpp).
//
// Bit convention everywhere: bit 1 stands for -1, bit 0 for +1 (the IEEE sign bit of the value), so
// the product of two +-1 values is -1 exactly where their bits differ: dot = valid - 2 * popcount(xor).
// Padded channels carry bit 0 in both operands, so they never add to a popcount.
#pragma once

#include <cstdint>
#include <vector>

namespace deepshrink_bits {

enum class Path : int { portable = 0, avx2 = 1, avx512 = 2 };

// Which paths this CPU can execute (the binary holds all three).
bool cpu_supports(Path path);

// For each of n_pos output positions p and blocks b < n_blocks of 8 output channels, lane l:
//   counts[p * counts_stride + b * 8 + l] = sum over steps s of
//     popcount((x[p * x_stride + x_off[s]] ^ w[w_off[s] + b * 8 + l]) & mask[w_off[s] + b * 8 + l])
// mask is null for binary weights. A step is one 64-bit word of one valid tap; positions of one call
// share their taps (an interior run of a row), so the tap list is built once per run.
struct Steps {
  const int64_t* x_off;  // word offset of each step's activations, relative to the position
  const int64_t* w_off;  // word offset of each step's 8-lane weight blocks
  int count;
};
struct Positions {
  int count;
  int64_t x_stride;       // words between consecutive positions' activations
  int64_t counts_stride;  // int32s between consecutive positions' counts
};
using CountFn = void (*)(const uint64_t* x, const uint64_t* w, const uint64_t* mask, const Steps& steps,
                         int n_blocks, const Positions& pos, int32_t* counts);
CountFn count_fn(Path path);

// Sign bits of (x * scale[c] + shift[c]) for channels c < channels, into ceil(channels / 64) words;
// scale/shift may be null (identity). Bit 1 where the value's sign bit is set.
using PackFn = void (*)(const float* x, const float* scale, const float* shift, int64_t channels,
                        uint64_t* words);
PackFn pack_fn(Path path);

struct ConvShape {
  int64_t in_ch, out_ch, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

// One output row of a convolution on 64-channel words (bits_ops.cpp): counts[ow * pos_counts + g * lanes
// + l] (lanes = output channels of a group rounded up to 8) and the valid +-1 products per position
// (valid[ow]) or, for ternary weights (nz: non-zero weights per (o, tap)), per position and channel.
struct RowGeometry {
  int64_t height, width, out_w, words, lanes, pos_counts, inner_lo, inner_hi;
};
RowGeometry row_geometry(const ConvShape& s, int64_t height, int64_t width, int64_t out_w);
struct RowScratch {
  RowScratch(const ConvShape& s, int64_t out_w);
  std::vector<int64_t> x_off, w_off, tap_id;
  std::vector<int32_t> counts, valid;
};
void count_row(const uint64_t* x_img, const uint64_t* w, const uint64_t* mask, const int32_t* nz, const ConvShape& s,
               const RowGeometry& geo, int64_t oh, CountFn count, RowScratch& scratch);

// Pixel-lane counts (bits_lanes.cpp) of one output row of a stride-1, one-group binary convolution whose
// input channels (at most the lane's bits) fill one T per pixel: x is (height, width) T, w is
// (out_ch, kh * kw) T; counts[o * out_w + ow] = sum over taps inside the image of popcount(x ^ w),
// valid[ow] = in_ch * (taps inside the image).
struct LaneShape {
  int64_t in_ch, out_ch, height, width, kh, kw, ph, pw, dh, dw, out_w;
};
template <typename T>
using LaneCountFn = void (*)(const T* x, const T* w, const LaneShape& shape, int64_t oh, int32_t* counts,
                             int32_t* valid);
template <typename T>
LaneCountFn<T> lane_count_fn(Path path);

}  // namespace deepshrink_bits
