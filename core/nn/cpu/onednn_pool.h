// Max-pooling 2x2x2 / stride 2 through oneDNN, on NDHWC fp32 activations.
// Primitives are built once per shape. oneDNN's max pooling, like our
// convention (core/nn/backend.h), sends the gradient to the first maximum of a
// window: it replaces the running maximum only on a strictly greater value.
#pragma once
#include <cstdint>
#include <memory>

namespace dq::cpu {

class OnednnPool {
 public:
  OnednnPool();
  ~OnednnPool();
  OnednnPool(const OnednnPool&) = delete;
  OnednnPool& operator=(const OnednnPool&) = delete;

  // x (n, d, h, w, c) -> y (n, d/2, h/2, w/2, c).
  void forward(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, const float* x, float* y);
  // dx (n, d, h, w, c) from x and dy; the argmax comes from a training-mode
  // forward over x (oneDNN's workspace), since our interface keeps no indices.
  void backward(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, const float* x,
                const float* dy, float* dx);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dq::cpu
