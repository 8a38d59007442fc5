// oneDNN convolutions and transposed convolutions for the CPU backend, over
// our NDHWC activations and our weight layouts (see core/nn/backend.h). The
// transposed convolution's forward pass is a matrix product (run as a oneDNN
// 1x1x1 convolution) and a scatter (onednn_conv.cpp says why); its backward
// passes are oneDNN's. Building a oneDNN primitive is the slow part (up to
// milliseconds), so each one is built once per shape and cached; a call then
// wraps our pointers and runs.
// Not thread-safe: the cache and the weight scratch buffers belong to one
// caller at a time, as the Backend itself does.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/nn/op_checks.h"

namespace dq::cpu {

// One layer's geometry, described by its input x (n, d, h, w, ci):
//  - convolution (transposed = false): kernel k in {1, 3}, stride 1, 'same'
//    padding; y (n, d, h, w, co), weights (co, k, k, k, ci).
//  - transposed convolution: kernel 2, stride 2 (k is ignored);
//    y (n, 2d, 2h, 2w, co), weights (ci, 2, 2, 2, co).
using ConvShape = ConvGeometry;  // core/nn/op_checks.h

class OnednnConv {
 public:
  OnednnConv();
  ~OnednnConv();
  OnednnConv(const OnednnConv&) = delete;
  OnednnConv& operator=(const OnednnConv&) = delete;

  // y = conv(x, w) + b, then max(0, .) when relu; b may be null.
  void forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
               bool relu);
  // dx = the adjoint of forward (without bias) applied to dy.
  void backward_data(const ConvShape& s, const float* dy, const float* w, float* dx);
  // dw (and db = sum of dy over n, d, h, w when db is non-null), overwritten.
  void backward_filter(const ConvShape& s, const float* x, const float* dy, float* dw, float* db);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The oneDNN library version actually loaded, e.g. "2.6.3".
std::string onednn_version();

}  // namespace dq::cpu
