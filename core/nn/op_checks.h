// Argument checks shared by every Backend implementation, so the CPU and the
// CUDA backend refuse the same calls with the same messages, and the layer
// geometry both derive from (x, w) in one place.
#pragma once
#include <cstdint>

#include "core/nn/tensor.h"

namespace dq {

// One convolution layer: input x (n, d, h, w, ci); co output channels;
// kernel k (1 or 3), or the 2x2x2 stride-2 transposed convolution.
struct ConvGeometry {
  bool transposed = false;
  int64_t n = 0, d = 0, h = 0, w = 0, ci = 0, co = 0, k = 1;
};

// An fp32 tensor with storage on `dev`.
void check_f32(const Tensor& t, Device dev, const char* op, const char* what);
void check_shape(const Tensor& t, const Shape& want, const char* op, const char* what);
void check_same(const Tensor& a, const Tensor& b, Device dev, const char* op, const char* what_a,
                const char* what_b);
// An activation (N, D, H, W, C).
void check_activation(const Tensor& t, Device dev, const char* op, const char* what);
void check_bias(const Tensor* b, int64_t co, Device dev, const char* op, const char* what);

// a (..., Ca), b (..., Cb), out (..., Ca + Cb): returns the number of channel
// vectors (the product of the leading dimensions).
int64_t check_concat(const Tensor& a, const Tensor& b, const Tensor& out, Device dev,
                     const char* op);

// Adam's operands: params, grads and both moments alike; step >= 1.
void check_adam(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                int64_t step, Device dev);

// Geometry from x and conv weights (Co, k, k, k, Ci) or transposed-conv
// weights (Ci, 2, 2, 2, Co), checking both.
ConvGeometry conv_geometry(const Tensor& x, const Tensor& w, Device dev, const char* op,
                           const char* what_x, const char* what_w);
ConvGeometry deconv_geometry(const Tensor& x, const Tensor& w, Device dev, const char* op,
                             const char* what_x, const char* what_w);
// The layer's output shape (N, D', H', W', Co).
Shape output_shape(const ConvGeometry& g);

}  // namespace dq
