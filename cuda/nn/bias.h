// Small kernels around the cuDNN convolutions (cuda/nn/conv.cpp): the
// bias + ReLU epilogue when no engine runs it fused, the fp32 <-> bf16/fp16
// casts of the reduced-precision modes, and the bias gradient. Activations
// are (m, c) with m = N * D * H * W rows and the channel fastest. All are
// asynchronous on `s`; zero-sized calls launch nothing.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/nn/tensor.h"

namespace dq {

// y[r, k] = act(y[r, k] + b[k]) in place; b may be null (no bias), act is
// max(0, .) when relu, else the identity.
void cuda_bias_act(float* y, const float* b, int64_t m, int64_t c, bool relu, cudaStream_t s);

// y = x rounded to `to` (bf16 or fp16, round to nearest even); n elements.
void cuda_cast_from_f32(const float* x, void* y, DType to, int64_t n, cudaStream_t s);

// y[r, k] = act(float(x[r, k]) + b[k]) from a bf16/fp16 x of type `from`;
// b may be null. With b null and relu false, a plain widening copy.
void cuda_cast_to_f32_bias_act(const void* x, DType from, float* y, const float* b, int64_t m,
                               int64_t c, bool relu, cudaStream_t s);

// db[k] = sum over r of dy[r, k], overwritten. Deterministic: the row
// blocks and the order of every sum depend only on m and c, never on the
// GPU or on scheduling. `partials` is device scratch of
// bias_grad_scratch_count(m, c) doubles.
int64_t bias_grad_scratch_count(int64_t m, int64_t c);
void cuda_bias_grad(const float* dy, float* db, int64_t m, int64_t c, double* partials,
                    cudaStream_t s);

}  // namespace dq
