// The Backend seam: every numerical op the U-Net, the trainer and inference
// need. The CPU backend (core/nn/cpu) is the executable spec; the CUDA backend
// (cuda/) is tested op by op against it. All activation tensors are NDHWC.
//
// Conventions shared by every implementation:
//  - A Backend caches plans and scratch and is not thread-safe: one per thread.
//  - Outputs are preallocated by the caller with the right shape and are
//    overwritten, never accumulated into (including weight gradients).
//  - conv3d: stride 1, 'same' zero padding, kernel k in {1, 3}.
//      x (N, D, H, W, Ci), w (Co, k, k, k, Ci), b (Co) or null, y (N, D, H, W, Co)
//      y[n,d,h,w,o] = b[o] + sum_{a,b,c,i} x[n, d+a-k/2, h+b-k/2, w+c-k/2, i] * w[o,a,b,c,i]
//  - deconv3d (transposed convolution, kernel 2, stride 2):
//      x (N, D, H, W, Ci), w (Ci, 2, 2, 2, Co), b (Co), y (N, 2D, 2H, 2W, Co)
//      y[n, 2d+a, 2h+b, 2w+c, o] = b[o] + sum_i x[n,d,h,w,i] * w[i,a,b,c,o]
//    (w is laid out as the filter of the convolution whose backward-data this
//    is, which is also PyTorch's ConvTranspose3d weight (Ci, Co, 2, 2, 2)
//    permuted to (Ci, 2, 2, 2, Co)).
//  - maxpool: window 2x2x2, stride 2, sides must be even. The backward pass
//    routes the gradient to the first maximum in window order (a, b, c).
//  - fuse_relu: y = max(0, conv + b); the caller then uses relu_backward on y.
//  - dropout keeps element i when philox_uniform(key, offset + i) >= p and
//    scales the kept ones by 1 / (1 - p); p = 0 is the identity. The offset
//    lets a shard of a larger batch (one data-parallel rank's samples) draw
//    exactly the masks the whole batch would have drawn.
//  - mse_loss = mean((pred - target)^2) over all elements; its gradient
//    2 (pred - target) / numel is written to dpred when dpred is non-null.
//    The reduction order is fixed (deterministic), accumulated in double.
//  - adam_step is PyTorch's Adam (bias-corrected, eps outside the sqrt):
//      m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//      p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps),  t = step >= 1
//  - unscale_and_check: grads[i] *= inv_scale for every i, then true when
//    every result is finite (no inf, no NaN). The host needs the answer, so
//    it waits for the device. Used with loss scaling (core/nn/loss_scale.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/nn/tensor.h"

namespace dq {

struct AdamConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.99f;
  float eps = 1e-8f;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "cpu (oneDNN 2.6, 2 threads)"

  // Memory. alloc returns zeroed memory on this backend's device.
  virtual Tensor alloc(const Shape& shape, DType dtype = DType::f32) = 0;
  virtual void upload(const Tensor& host, Tensor& dst) = 0;    // host -> this device
  virtual void download(const Tensor& src, Tensor& host) = 0;  // this device -> host
  virtual void fill(Tensor& t, float value) = 0;
  virtual void copy(const Tensor& src, Tensor& dst) = 0;
  virtual void axpy(float a, const Tensor& x, Tensor& y) = 0;  // y += a * x
  virtual void scale(Tensor& x, float a) = 0;                  // x *= a

  // Convolutions (see the conventions above).
  virtual void conv3d_forward(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y,
                              bool fuse_relu) = 0;
  virtual void conv3d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) = 0;
  virtual void conv3d_backward_filter(const Tensor& x, const Tensor& dy, Tensor& dw,
                                      Tensor* db) = 0;
  virtual void deconv3d_forward(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y,
                                bool fuse_relu) = 0;
  virtual void deconv3d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) = 0;
  virtual void deconv3d_backward_filter(const Tensor& x, const Tensor& dy, Tensor& dw,
                                        Tensor* db) = 0;

  // Pooling and pointwise ops. relu_forward, relu_backward,
  // dropout_forward and dropout_backward may run in place (y == x; dx == dy,
  // or dx == y for relu_backward).
  virtual void maxpool_forward(const Tensor& x, Tensor& y) = 0;
  virtual void maxpool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) = 0;
  virtual void relu_forward(const Tensor& x, Tensor& y) = 0;
  virtual void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) = 0;
  void dropout_forward(const Tensor& x, Tensor& y, float p, uint64_t key, uint64_t offset = 0) {
    dropout_forward_at(x, y, p, key, offset);
  }
  void dropout_backward(const Tensor& dy, Tensor& dx, float p, uint64_t key, uint64_t offset = 0) {
    dropout_backward_at(dy, dx, p, key, offset);
  }

  // out (N, D, H, W, Ca + Cb) = [a | b] along channels, and its inverse.
  virtual void concat_channels(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  virtual void split_channels(const Tensor& out, Tensor& a, Tensor& b) = 0;

  virtual float mse_loss(const Tensor& pred, const Tensor& target, Tensor* dpred) = 0;
  virtual void adam_step(Tensor& params, const Tensor& grads, Tensor& m, Tensor& v,
                         const AdamConfig& cfg, int64_t step) = 0;
  virtual bool unscale_and_check(Tensor& grads, float inv_scale) = 0;

 protected:
  // The implementations behind dropout_forward / dropout_backward (kept
  // apart so the offset's default lives in one non-virtual place).
  virtual void dropout_forward_at(const Tensor& x, Tensor& y, float p, uint64_t key,
                                  uint64_t offset) = 0;
  virtual void dropout_backward_at(const Tensor& dy, Tensor& dx, float p, uint64_t key,
                                   uint64_t offset) = 0;
};

}  // namespace dq
