// A whole network as one native call: a list of ops (float convolution, binary convolution on 64-channel
// words or on pixel lanes, packing, global average pool + linear) over values that live in a per-thread
// arena, run image by image. No op allocates, crosses into Python or goes through PyTorch's dispatcher;
// at batch > 1 the images are split over PyTorch's intra-op threads.
//
// A value is one image's activation (C, H, W): its floats in (C, H, W) order (so that an output row of one
// channel is contiguous: epilogues work a channel's row at a time) and/or its sign bits in the format its
// binary consumer reads: (H, W) words of `lane` bits (16, 32 or 64; at most `lane` channels, read by the
// pixel-lane kernel) or (H, W, groups * words) 64-bit words (read by the word kernel). The bits are
// sign(y * pack_scale + pack_shift): the consumer's input BatchNorm, applied by whoever writes the value.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bits.h"
#include "bits_plan.h"

namespace deepshrink_bits {

Path parse_path(const std::string& name);                          // bits_ops.cpp
ConvShape to_shape(const std::vector<int64_t>& shape);             // bits_ops.cpp
at::Tensor lane_weights(const at::Tensor& sign, const ConvShape& s, int64_t lane);  // bits_lane_ops.cpp

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

enum class Kind { float_conv, word_conv, lane_conv, pack, pool_linear, shortcut };

struct Op {
  Kind kind;
  int in, residual, out;
  ConvShape shape{};
  bool relu = false;
  at::Tensor weight, mask, nonzero, scale, shift;  // weight: floats, sign words or lane words
  std::vector<int64_t> chan_offset;                 // word conv: where channel o's counts start in a count row
};

struct Workspace {
  std::vector<uint64_t> arena;
  std::vector<std::optional<RowScratch>> rows;  // per word-conv op
  LaneScratch lanes;                             // lane convs off the fused rows
  std::vector<float> acc, row;
  std::vector<double> op_seconds;  // per op, summed over images, when profiling
};

}  // namespace

class NetPlan {
 public:
  explicit NetPlan(const std::string& path) : path_(parse_path(path)) {}

  int64_t add_value(int64_t channels, int64_t height, int64_t width, bool has_float, int64_t lane, int64_t groups,
                    std::optional<at::Tensor> pack_scale, std::optional<at::Tensor> pack_shift) {
    TORCH_CHECK(lane == 0 || lane == 16 || lane == 32 || lane == 64, "lane is 0, 16, 32 or 64 bits");
    TORCH_CHECK(lane == 64 || lane == 0 || (groups == 1 && channels <= lane), "pixel lanes hold one group of at most ",
                lane, " channels");
    TORCH_CHECK(groups >= 1 && channels % groups == 0, "groups must divide the channels");
    Value v{channels, height, width, has_float, static_cast<int>(lane), groups,
            lane == 64 ? ceil_div(channels / groups, 64) : 1};
    TORCH_CHECK(pack_scale.has_value() == pack_shift.has_value(), "give both pack_scale and pack_shift or neither");
    if (pack_scale) {
      TORCH_CHECK(pack_scale->numel() == channels && pack_shift->numel() == channels,
                  "pack affine needs one value per channel");
      held_.push_back(pack_scale->to(at::kFloat).contiguous());
      held_.push_back(pack_shift->to(at::kFloat).contiguous());
      v.pack_scale = held_[held_.size() - 2].data_ptr<float>(), v.pack_shift = held_.back().data_ptr<float>();
    }
    v.float_offset = arena_bytes_;
    arena_bytes_ += ceil_div(has_float ? channels * v.plane() * 4 : 0, 64) * 64;
    v.bits_offset = arena_bytes_;
    arena_bytes_ += ceil_div(v.bits_bytes(), 64) * 64;
    values_.push_back(std::move(v));
    return static_cast<int64_t>(values_.size()) - 1;
  }

  void add_float_conv(int64_t in, int64_t out, const std::vector<int64_t>& shape, const at::Tensor& weight,
                      const at::Tensor& scale, const at::Tensor& shift, bool relu) {
    Op op = conv_op(Kind::float_conv, in, -1, out, shape, scale, shift, relu);
    TORCH_CHECK(values_[in].has_float, "a float convolution reads floats");
    const ConvShape& s = op.shape;
    TORCH_CHECK(weight.numel() == s.out_ch * s.in_ch / s.groups * s.kh * s.kw, "weight does not match the shape");
    // (O, C/G, KH, KW) -> (C/G, KH, KW, O): a tap's weights for every output channel side by side
    op.weight = weight.to(at::kFloat).reshape({s.out_ch, s.in_ch / s.groups, s.kh, s.kw}).permute({1, 2, 3, 0}).contiguous();
    acc_floats_ = std::max(acc_floats_, values_[out].channels * values_[out].width);
    ops_.push_back(std::move(op));
  }

  // Binary/ternary convolution reading `in`'s bits: pixel lanes when `in` holds lanes, else words.
  // sign/mask/nonzero as from pack_weights; scale/shift per output channel (BatchNorm folded in).
  void add_bit_conv(int64_t in, int64_t residual, int64_t out, const std::vector<int64_t>& shape,
                    const at::Tensor& sign, const at::Tensor& mask, const at::Tensor& nonzero, const at::Tensor& scale,
                    const at::Tensor& shift, bool relu) {
    const Value& x = values_.at(in);
    // one 64-bit word per pixel reads as 64-bit lanes only on avx512: elsewhere lane popcounts are scalar,
    // slower than the word kernel's vectors
    const bool lanes = x.lane == 16 || x.lane == 32 ||
                       (path_ == Path::avx512 && x.lane == 64 && mask.numel() == 0 && x.groups == 1 &&
                        x.channels <= 64 && shape[4] == 1 && shape[5] == 1 && shape[10] == 1);
    Op op = conv_op(lanes ? Kind::lane_conv : Kind::word_conv, in, residual, out, shape, scale, shift, relu);
    const ConvShape& s = op.shape;
    TORCH_CHECK(x.lane != 0 && x.channels == s.in_ch, "a binary convolution reads its input's bits");
    const int64_t group_out = s.out_ch / s.groups, lanes_w = ceil_div(group_out, 8) * 8;
    if (lanes) {
      TORCH_CHECK(mask.numel() == 0, "pixel lanes take binary weights");
      op.weight = lane_weights(sign, s, x.lane);
    } else {
      TORCH_CHECK(x.lane == 64 && x.groups == s.groups, "the word kernel reads 64-bit words packed per group");
      op.weight = sign, op.mask = mask, op.nonzero = nonzero;
      for (int64_t o = 0; o < s.out_ch; ++o) op.chan_offset.push_back((o / group_out) * lanes_w + o % group_out);
    }
    ops_.push_back(std::move(op));
  }

  void add_pack(int64_t in, int64_t out) {
    TORCH_CHECK(values_[in].has_float && values_[out].lane != 0, "pack reads floats and writes bits");
    Op op{Kind::pack, static_cast<int>(in), -1, static_cast<int>(out)};
    ops_.push_back(std::move(op));
  }

  // Global average pool of `in` then y = weight @ mean + bias into `out` (classes, 1, 1).
  void add_pool_linear(int64_t in, int64_t out, const at::Tensor& weight, const at::Tensor& bias) {
    Op op{Kind::pool_linear, static_cast<int>(in), -1, static_cast<int>(out)};
    op.weight = weight.to(at::kFloat).contiguous(), op.shift = bias.to(at::kFloat).contiguous();
    TORCH_CHECK(op.weight.dim() == 2 && op.weight.size(1) == values_[in].channels &&
                op.weight.size(0) == values_[out].channels && op.shift.numel() == values_[out].channels,
                "linear weight (classes, channels) and bias (classes)");
    ops_.push_back(std::move(op));
  }

  // ResNet's option-A shortcut: out[c, h, w] = in[c - pad_before, h * stride, w * stride], zero in the
  // pad_before channels before and the channels after the input's.
  void add_shortcut(int64_t in, int64_t out, int64_t stride, int64_t pad_before) {
    const Value &x = values_.at(in), &y = values_.at(out);
    TORCH_CHECK(x.has_float && y.has_float && stride >= 1 && pad_before >= 0 &&
                pad_before + x.channels <= y.channels && y.height == ceil_div(x.height, stride) &&
                y.width == ceil_div(x.width, stride), "shortcut values do not match");
    Op op{Kind::shortcut, static_cast<int>(in), -1, static_cast<int>(out)};
    op.shape.sh = stride, op.shape.ph = pad_before;
    ops_.push_back(std::move(op));
  }

  at::Tensor run(const at::Tensor& x_in, int64_t input, int64_t output);

  // Seconds spent in each op (kind name, summed over images and threads) since profiling was switched on.
  void set_profiling(bool on) {
    std::lock_guard<std::mutex> lock(mutex_);
    profiling_ = on;
    for (Workspace& ws : workspaces_) ws.op_seconds.assign(ops_.size(), 0.0);
  }
  std::vector<std::pair<std::string, double>> op_seconds() const {
    static const char* names[] = {"float_conv", "word_conv", "lane_conv", "pack", "pool_linear", "shortcut"};
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::pair<std::string, double>> out;
    for (size_t k = 0; k < ops_.size(); ++k) {
      double total = 0.0;
      for (const Workspace& ws : workspaces_) total += k < ws.op_seconds.size() ? ws.op_seconds[k] : 0.0;
      out.emplace_back(names[static_cast<int>(ops_[k].kind)], total);
    }
    return out;
  }

  int64_t resident_bytes() const {
    int64_t total = 0;
    for (const Op& op : ops_)
      for (const at::Tensor* t : {&op.weight, &op.mask, &op.nonzero, &op.scale, &op.shift})
        if (t->defined()) total += t->numel() * t->element_size();
    for (const at::Tensor& t : held_) total += t.numel() * t.element_size();
    return total;
  }

 private:
  Op conv_op(Kind kind, int64_t in, int64_t residual, int64_t out, const std::vector<int64_t>& shape,
             const at::Tensor& scale, const at::Tensor& shift, bool relu) {
    TORCH_CHECK(in >= 0 && in < static_cast<int64_t>(values_.size()) && out >= 0 &&
                out < static_cast<int64_t>(values_.size()) && residual < static_cast<int64_t>(values_.size()),
                "unknown value");
    Op op{kind, static_cast<int>(in), static_cast<int>(residual), static_cast<int>(out), to_shape(shape), relu};
    const ConvShape& s = op.shape;
    const Value &x = values_[in], &y = values_[out];
    TORCH_CHECK(y.channels == s.out_ch && y.height == (x.height + 2 * s.ph - s.dh * (s.kh - 1) - 1) / s.sh + 1 &&
                y.width == (x.width + 2 * s.pw - s.dw * (s.kw - 1) - 1) / s.sw + 1, "output value does not match");
    TORCH_CHECK(residual < 0 || (values_[residual].has_float && values_[residual].channels == y.channels &&
                                 values_[residual].plane() == y.plane()), "residual must match the output");
    op.scale = scale.to(at::kFloat).contiguous(), op.shift = shift.to(at::kFloat).contiguous();
    TORCH_CHECK(op.scale.numel() == s.out_ch && op.shift.numel() == s.out_ch, "one scale and shift per channel");
    return op;
  }

  void run_image(const float* x, float* logits, int64_t input, int64_t output, Workspace& ws) const;

  Path path_;
  std::vector<Value> values_;
  std::vector<at::Tensor> held_;  // the values' pack affines
  std::vector<Op> ops_;
  int64_t arena_bytes_ = 0, acc_floats_ = 0;
  bool profiling_ = false;
  mutable std::mutex mutex_;  // the workspaces are shared by calls
  mutable std::vector<Workspace> workspaces_;
};

void NetPlan::run_image(const float* x, float* result, int64_t input, int64_t output, Workspace& ws) const {
  auto* base = reinterpret_cast<char*>(ws.arena.data());
  auto floats = [&](int v) -> float* {
    return v == input ? const_cast<float*>(x) : reinterpret_cast<float*>(base + values_[v].float_offset);
  };
  auto bits = [&](int v) -> void* { return base + values_[v].bits_offset; };
  for (size_t k = 0; k < ops_.size(); ++k) {
    const auto started = std::chrono::steady_clock::now();
    const Op& op = ops_[k];
    const Value& out = values_[op.out];
    const RowSink sink{out.has_float ? floats(op.out) : nullptr, op.residual >= 0 ? floats(op.residual) : nullptr,
                       out.lane ? bits(op.out) : nullptr, &out,
                       out.pack_scale, out.pack_shift, op.relu};
    const float *scale = op.scale.defined() ? op.scale.data_ptr<float>() : nullptr,
                *shift = op.shift.defined() ? op.shift.data_ptr<float>() : nullptr;
    switch (op.kind) {
      case Kind::float_conv: {
        if (const FloatRowFn fused = float_row_fn(path_, op.shape, out)) {
          for (int64_t oh = 0; oh < out.height; ++oh)
            fused(floats(op.in), values_[op.in], op.weight.data_ptr<float>(), op.shape, oh, scale, shift, sink);
          break;
        }
        for (int64_t oh = 0; oh < out.height; ++oh) {
          float_conv_row(floats(op.in), values_[op.in], op.weight.data_ptr<float>(), op.shape, oh, out.width,
                         ws.acc.data());
          float_epilogue(ws.acc.data(), scale, shift, oh, sink, ws.row.data());
        }
        break;
      }
      case Kind::lane_conv: {
        const Value& in = values_[op.in];
        const ConvShape& s = op.shape;
        const LaneShape shape{s.in_ch, s.out_ch, in.height, in.width, s.kh, s.kw, s.ph, s.pw, s.dh, s.dw, out.width};
        lane_conv_rows(path_, in.lane, bits(op.in), op.weight.data_ptr(), shape, 0, out.height, scale, shift, sink,
                       ws.lanes);
        break;
      }
      case Kind::word_conv: {
        const Value& in = values_[op.in];
        const RowGeometry geo = row_geometry(op.shape, in.height, in.width, out.width);
        if (!ws.rows[k]) ws.rows[k].emplace(op.shape, out.width);
        RowScratch& scratch = *ws.rows[k];
        const bool ternary = op.mask.numel() > 0;
        for (int64_t oh = 0; oh < out.height; ++oh) {
          count_row(static_cast<const uint64_t*>(bits(op.in)),
                    reinterpret_cast<const uint64_t*>(op.weight.data_ptr<int64_t>()),
                    ternary ? reinterpret_cast<const uint64_t*>(op.mask.data_ptr<int64_t>()) : nullptr,
                    ternary ? op.nonzero.data_ptr<int32_t>() : nullptr, op.shape, geo, oh, count_fn(path_), scratch);
          count_epilogue(scratch.counts.data(), geo.pos_counts, op.chan_offset.data(), scratch.valid.data(), ternary,
                         scale, shift, oh, sink, ws.row.data());
        }
        break;
      }
      case Kind::pack: {
        const RowSink bits_only{nullptr, nullptr, sink.bits, &out, sink.pack_scale, sink.pack_shift, false};
        for (int64_t oh = 0; oh < out.height; ++oh) pack_row(floats(op.in), oh, bits_only, ws.row.data());
        break;
      }
      case Kind::shortcut: {
        const Value& in = values_[op.in];
        const float* src = floats(op.in);
        float* dst = floats(op.out);
        const int64_t stride = op.shape.sh, before = op.shape.ph;
        std::fill(dst, dst + out.channels * out.plane(), 0.0f);
        for (int64_t c = 0; c < in.channels; ++c)
          for (int64_t h = 0; h < out.height; ++h)
            for (int64_t w = 0; w < out.width; ++w)
              dst[(c + before) * out.plane() + h * out.width + w] = src[c * in.plane() + h * stride * in.width + w * stride];
        break;
      }
      case Kind::pool_linear: {
        const Value& in = values_[op.in];
        const float* src = floats(op.in);
        float* mean = ws.row.data();
        for (int64_t c = 0; c < in.channels; ++c) {
          float sum = 0.0f;
          for (int64_t i = 0; i < in.plane(); ++i) sum += src[c * in.plane() + i];
          mean[c] = sum / static_cast<float>(in.plane());
        }
        const float* w = op.weight.data_ptr<float>();
        float* y = floats(op.out);
        for (int64_t j = 0; j < out.channels; ++j) {
          float sum = 0.0f;
          for (int64_t c = 0; c < in.channels; ++c) sum += w[j * in.channels + c] * mean[c];
          y[j] = sum + shift[j];
        }
        break;
      }
    }
    if (profiling_) ws.op_seconds[k] += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }
  const Value& y = values_[output];
  std::memcpy(result, floats(static_cast<int>(output)), y.channels * y.plane() * sizeof(float));
}

at::Tensor NetPlan::run(const at::Tensor& x_in, int64_t input, int64_t output) {
  const Value &in = values_.at(input), &out = values_.at(output);
  TORCH_CHECK(x_in.dim() == 4 && x_in.size(1) == in.channels && x_in.size(2) == in.height && x_in.size(3) == in.width,
              "input must be (N, ", in.channels, ", ", in.height, ", ", in.width, ")");
  TORCH_CHECK(out.has_float, "the output value holds no floats");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t n = x.size(0), in_size = in.channels * in.plane(), out_size = out.channels * out.plane();
  at::Tensor result = at::empty({n, out.channels, out.height, out.width}, x.options());
  std::lock_guard<std::mutex> lock(mutex_);
  const int threads = at::get_num_threads();
  if (static_cast<int>(workspaces_.size()) < threads) workspaces_.resize(threads);
  for (int t = 0; t < threads; ++t) {  // sized once; later calls reuse them
    Workspace& ws = workspaces_[t];
    if (ws.arena.size() * 8 < static_cast<size_t>(arena_bytes_)) ws.arena.assign(ceil_div(arena_bytes_, 8), 0);
    ws.rows.resize(ops_.size());
    int64_t row = 0;  // a row of any value, or one value per channel (pool_linear's means)
    for (const Value& v : values_) row = std::max({row, v.width, v.channels});
    ws.row.resize(row);
    ws.acc.resize(acc_floats_);
    ws.op_seconds.resize(ops_.size(), 0.0);
  }
  const float* xp = x.data_ptr<float>();
  float* yp = result.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    Workspace& ws = workspaces_[at::get_thread_num()];
    for (int64_t img = begin; img < end; ++img) run_image(xp + img * in_size, yp + img * out_size, input, output, ws);
  });
  return result;
}

void register_net_plan(pybind11::module& m) {
  pybind11::class_<NetPlan>(m, "NetPlan", "a whole network's ops run natively, image by image; run(x, input, output)")
      .def(pybind11::init<const std::string&>())
      .def("add_value", &NetPlan::add_value)
      .def("add_float_conv", &NetPlan::add_float_conv)
      .def("add_bit_conv", &NetPlan::add_bit_conv)
      .def("add_pack", &NetPlan::add_pack)
      .def("add_pool_linear", &NetPlan::add_pool_linear)
      .def("add_shortcut", &NetPlan::add_shortcut)
      .def("run", &NetPlan::run)
      .def("set_profiling", &NetPlan::set_profiling)
      .def("op_seconds", &NetPlan::op_seconds)
      .def("resident_bytes", &NetPlan::resident_bytes);
}

}  // namespace deepshrink_bits
