// Hand-written CUDA kernels for the ops cuDNN does not cover, as host
// functions on raw fp32 device pointers. Each implements exactly the
// convention stated in core/nn/backend.h and is tested against the CPU backend
// in tests/gpu/test_cuda_kernels.cpp. All are asynchronous on `s` except
// where noted; n, m and the dimensions are element counts; zero-sized calls
// launch nothing.
//
//   pointwise.cu  fill, copy, axpy, scale, ReLU, dropout, channel concat/split
//   pool.cu       max-pool 2x2x2 forward/backward
//   loss.cu       MSE loss and gradient (deterministic reduction)
//   adam.cu       Adam over the flat parameter buffer
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/nn/backend.h"
#include "cuda/launch.h"

namespace dq {

// x[i] = value
void cuda_fill(float* x, float value, int64_t n, cudaStream_t s);
// y[i] = x[i]  (device to device; x and y must not overlap unless equal)
void cuda_copy(const float* x, float* y, int64_t n, cudaStream_t s);
// y[i] += a * x[i]
void cuda_axpy(float a, const float* x, float* y, int64_t n, cudaStream_t s);
// x[i] *= a
void cuda_scale(float* x, float a, int64_t n, cudaStream_t s);

// y = max(0, x); may run in place (y == x).
void cuda_relu_forward(const float* x, float* y, int64_t n, cudaStream_t s);
// dx = y > 0 ? dy : 0, with y the ReLU output; may run in place (dx == dy or dx == y).
void cuda_relu_backward(const float* y, const float* dy, float* dx, int64_t n, cudaStream_t s);

// Keeps element i when philox_uniform(key, offset + i) >= p and scales it
// by 1 / (1 - p); the mask is bit-identical to the CPU backend's.
// 0 <= p < 1; may run in place.
void cuda_dropout_forward(const float* x, float* y, int64_t n, float p, uint64_t key,
                          cudaStream_t s, uint64_t offset = 0);
void cuda_dropout_backward(const float* dy, float* dx, int64_t n, float p, uint64_t key,
                           cudaStream_t s, uint64_t offset = 0);

// out (m, ca + cb) = [a (m, ca) | b (m, cb)] along the last (channel) axis,
// m = N * D * H * W, and its inverse. Buffers must not overlap.
void cuda_concat_channels(const float* a, const float* b, float* out, int64_t m, int64_t ca,
                          int64_t cb, cudaStream_t s);
void cuda_split_channels(const float* out, float* a, float* b, int64_t m, int64_t ca, int64_t cb,
                         cudaStream_t s);

// Max-pool 2x2x2, stride 2. x (n, d, h, w, c) with d, h, w even;
// y, dy (n, d/2, h/2, w/2, c); dx like x, overwritten. The gradient of each
// window goes to its first maximum in window order (a, b, c), found again
// from x, so the pooled y is not needed.
void cuda_maxpool_forward(const float* x, float* y, int64_t n, int64_t d, int64_t h, int64_t w,
                          int64_t c, cudaStream_t s);
void cuda_maxpool_backward(const float* x, const float* dy, float* dx, int64_t n, int64_t d,
                           int64_t h, int64_t w, int64_t c, cudaStream_t s);

// *loss = mean((pred - target)^2), written to device memory; when dpred is
// non-null, dpred = 2 (pred - target) / n. `partials` is device scratch of
// kMseMaxBlocks doubles. The result depends only on the inputs and n, never
// on the GPU or on scheduling (see loss.cu).
constexpr int kMseMaxBlocks = 1024;
void cuda_mse_loss(const float* pred, const float* target, float* dpred, int64_t n,
                   double* partials, float* loss, cudaStream_t s);

// One Adam step (PyTorch's formula, see core/nn/backend.h) over n parameters;
// step >= 1 counts this step. params, grads, m and v must not overlap.
void cuda_adam_step(float* params, const float* grads, float* m, float* v, int64_t n,
                    const AdamConfig& cfg, int64_t step, cudaStream_t s);

}  // namespace dq
