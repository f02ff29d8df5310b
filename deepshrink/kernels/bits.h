// Shared declarations of the bit kernels: the per-path micro-kernels (bits_paths.cpp) and the
// drivers that walk a convolution's geometry and apply the epilogue (bits_ops.cpp).
//
// Bit convention everywhere: bit 1 stands for -1, bit 0 for +1 (the IEEE sign bit of the value), so
// the product of two +-1 values is -1 exactly where their bits differ: dot = valid - 2 * popcount(xor).
// Padded channels carry bit 0 in both operands, so they never add to a popcount.
#pragma once

#include <cstdint>

namespace deepshrink_bits {

enum class Path : int { portable = 0, avx2 = 1, avx512 = 2 };

// Which paths this CPU can execute (the binary holds all three).
bool cpu_supports(Path path);

// counts[b * 8 + l] = sum over taps t and words j of
//   popcount((x[x_off[t] + j] ^ w[w_off[t] + j * w_stride + b * 8 + l]) & mask[...])
// for blocks b < n_blocks of 8 output channels; mask is null for binary weights.
struct TapList {
  const int64_t* x_off;  // word offset of each valid tap's activations
  const int64_t* w_off;  // word offset of each valid tap's weights
  int n_taps;
};
using CountFn = void (*)(const uint64_t* x, const uint64_t* w, const uint64_t* mask, const TapList& taps,
                         int words, int64_t w_stride, int n_blocks, int32_t* counts);
CountFn count_fn(Path path);

// Sign bits of (x * scale[c] + shift[c]) for channels c < channels, into ceil(channels / 64) words;
// scale/shift may be null (identity). Bit 1 where the value's sign bit is set.
using PackFn = void (*)(const float* x, const float* scale, const float* shift, int64_t channels,
                        uint64_t* words);
PackFn pack_fn(Path path);

}  // namespace deepshrink_bits
