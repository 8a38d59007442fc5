// The DeepQSM 3D U-Net (Bollmann et al. 2019, Fig. 1), written once against
// the Backend interface.
//
// Level i (0 = full resolution) has F_i = base_filters * 2^i channels.
//   encoder level i (i < depth-1):  conv3 -> ReLU -> dropout, conv3 -> ReLU -> dropout,
//                                   then max-pool 2x2x2 (the skip is taken before the pool)
//   bottleneck (i = depth-1):       conv3 -> ReLU -> dropout, conv3 -> ReLU -> dropout
//   decoder level i (depth-2 .. 0): deconv 2x2x2/2 (F_{i+1} -> F_i) -> ReLU,
//                                   concat [upsampled | skip] -> conv3 (2F_i -> F_i) -> ReLU,
//                                   conv3 -> ReLU
//   head:                           conv (kernel head_kernel, F_0 -> 1), linear
//   residual (optional):            output += input field
// Parameter names, in flat-buffer order:
//   enc{i}.conv{0,1}.{w,b} for i = 0 .. depth-1, then for i = depth-2 .. 0:
//   up{i}.{w,b}, dec{i}.conv{0,1}.{w,b}; then head.{w,b}.
// Input sides must be multiples of 2^(depth-1) (16 for the paper's 5 levels).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/nn/backend.h"
#include "core/nn/params.h"

namespace dq {

struct UNetConfig {
  int depth = 5;          // levels, including the bottleneck (depth-1 poolings)
  int base_filters = 16;  // F_0
  float dropout = 0.05f;  // after every encoder and bottleneck convolution
  bool residual = false;  // add the input field to the output
  int head_kernel = 1;    // 1 (the paper's 1x1x1 linear head) or 3
};

// The ranges every reader of a model shares (a training config's model.*
// keys, a checkpoint's attributes, the UNet itself): the deepest level has
// base_filters * 2^(depth-1) channels, which these keep far from int
// overflow and far beyond any useful width.
constexpr int kMinDepth = 2, kMaxDepth = 6, kMaxBaseFilters = 1024;

// Whether weights of one config fit the other (dropout does not change
// the parameters), and a short description for messages.
bool same_architecture(const UNetConfig& a, const UNetConfig& b);
std::string describe_architecture(const UNetConfig& m);

class UNet {
 public:
  explicit UNet(const UNetConfig& cfg);

  const UNetConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  // Side lengths must be multiples of this.
  int64_t side_multiple() const { return int64_t{1} << (cfg_.depth - 1); }
  // Fails with a clear message when x (N, D, H, W, 1) cannot go through the net.
  void check_input(const Shape& x) const;

  // He-normal weights (std sqrt(2 / fan_in)), zero biases, into a host buffer
  // of layout().total() floats, drawn from a counter-based RNG keyed by seed.
  void init_he(Tensor& host_params, uint64_t seed) const;

  // Forward pass. With train = true, dropout is applied with masks keyed by
  // dropout_key and every activation the backward pass needs is kept.
  // x (N, D, H, W, 1) -> y (N, D, H, W, 1), both on the backend's device.
  // sample_offset: the index of x's first sample in a larger batch split
  // over data-parallel ranks, so each sample draws the same dropout masks
  // whichever rank holds it.
  void forward(Backend& be, const Tensor& params, const Tensor& x, Tensor& y, bool train,
               uint64_t dropout_key = 0, int64_t sample_offset = 0);
  // Gradient of the loss with respect to every parameter, given dL/dy, for
  // the most recent forward(train = true). dparams has the layout of params
  // and is overwritten.
  //
  // on_ready, when given, is called as blocks of gradients become final:
  // on_ready(k) means dparams[k, total) will not be written again (the
  // backward pass runs from the head, at the end of the flat buffer, down to
  // enc0 at its start, so the final part is always a suffix). k decreases
  // from call to call and the last call has k = 0. On a GPU backend the
  // gradients are final in stream order: work queued after the call sees
  // them. The trainer uses it to start all-reducing the tail of the buffer
  // while the earlier layers are still being differentiated.
  using GradsReady = std::function<void(int64_t ready_from)>;
  void backward(Backend& be, const Tensor& params, const Tensor& dy, Tensor& dparams,
                const GradsReady& on_ready = {});

  // Floating-point operations (2 per multiply-add) of the convolutions in one
  // forward pass over an input of (1, D, H, W, 1); backward costs about 2x.
  double forward_flops(int64_t d, int64_t h, int64_t w) const;

  // Bytes of activations and gradient scratch that a training forward +
  // backward over input x allocates (fp32), from the same buffer plan the
  // passes use; x itself and dparams belong to the caller and are not
  // counted. The paper's net at batch 40 of 64^3 needs about 9.0 GB.
  int64_t activation_bytes(const Shape& x) const;
  // What the buffers allocated so far take, and how many allocations made
  // them: both stay put once a shape has been through forward and backward.
  int64_t buffer_bytes() const;
  int64_t buffer_allocations() const { return allocations_; }
  // Gives the activation buffers back (their memory returns to the backend,
  // or to the driver once the backend is gone too); the next pass makes them
  // again.
  void release_buffers() {
    bufs_.clear();
    plan_.clear();
  }

 private:
  // Every buffer a training step over input x uses, by name. forward and
  // backward take buffers only from this plan, so activation_bytes counts
  // exactly what they allocate.
  std::map<std::string, Shape> buffer_plan(const Shape& x) const;
  // A buffer of the current plan, allocated on first use and reused while
  // the input shape stays the same (no allocation in the steady state).
  Tensor& buf(Backend& be, const std::string& name);
  int filters(int level) const { return cfg_.base_filters << level; }

  UNetConfig cfg_;
  ParamLayout layout_;
  std::map<std::string, Shape> plan_;  // buffer_plan(last_input_)
  std::map<std::string, Tensor> bufs_;
  Device bufs_device_ = Device::cpu;
  int64_t allocations_ = 0;
  Shape last_input_;
  Tensor input_;  // a view of the last training input: the caller keeps it alive until backward
  bool have_forward_ = false;
  uint64_t last_dropout_key_ = 0;  // the masks of the last training forward
  int64_t last_sample_offset_ = 0;
};

}  // namespace dq
