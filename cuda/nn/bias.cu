// Bias/ReLU epilogue, precision casts and the deterministic bias gradient.
// All memory-bound; one thread per element with a grid-stride loop, except
// the bias gradient, which is a two-pass reduction (see cuda_bias_grad).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/nn/bias.h"
#include "cuda/nn/kernels.h"

namespace dq {

namespace {

using detail::grid_for;
using detail::kThreads;

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

__device__ __forceinline__ float to_f32(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__global__ void bias_act_kernel(float* y, const float* __restrict__ b, int64_t n, int64_t c,
                                bool relu) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) {
    float v = y[i];
    if (b) v += b[i % c];
    y[i] = relu && !(v > 0.0f) ? 0.0f : v;
  }
}

template <typename T>
__global__ void cast_from_f32_kernel(const float* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) y[i] = from_f32<T>(x[i]);
}

template <typename T>
__global__ void cast_to_f32_kernel(const T* __restrict__ x, float* __restrict__ y,
                                   const float* __restrict__ b, int64_t n, int64_t c, bool relu) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) {
    float v = to_f32(x[i]);
    if (b) v += b[i % c];
    y[i] = relu && !(v > 0.0f) ? 0.0f : v;
  }
}

// Bias gradient geometry: rows are split into `blocks` ranges of `rows`
// rows each, both functions of m alone.
constexpr int64_t kMinRowsPerBlock = 64;
constexpr int64_t kMaxRowBlocks = 512;

struct RowBlocks {
  int64_t blocks, rows;
};

RowBlocks row_blocks(int64_t m) {
  int64_t blocks = (m + kMinRowsPerBlock - 1) / kMinRowsPerBlock;
  if (blocks > kMaxRowBlocks) blocks = kMaxRowBlocks;
  if (blocks < 1) blocks = 1;
  return {blocks, (m + blocks - 1) / blocks};
}

// Pass 1: block b sums rows [b * rows, (b + 1) * rows) for every channel.
// Channels go 256 at a time; when there are fewer than 256, the spare
// threads take further rows ("lanes"), and the lanes are added in lane order.
__global__ void __launch_bounds__(kThreads)
    bias_grad_partial_kernel(const float* __restrict__ dy, int64_t m, int64_t c, int64_t rows,
                             double* __restrict__ partials) {
  __shared__ double s[kThreads];
  const int t = static_cast<int>(threadIdx.x);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows;
  const int64_t r1 = r0 + rows < m ? r0 + rows : m;
  for (int64_t ch0 = 0; ch0 < c; ch0 += kThreads) {
    const int cc = static_cast<int>(c - ch0 < kThreads ? c - ch0 : kThreads);
    const int lanes = kThreads / cc;
    double acc = 0.0;
    if (t < lanes * cc) {
      const int64_t ch = ch0 + t % cc;
      for (int64_t r = r0 + t / cc; r < r1; r += lanes) acc += dy[r * c + ch];
    }
    s[t] = acc;
    __syncthreads();
    if (t < cc) {
      double sum = 0.0;
      for (int l = 0; l < lanes; ++l) sum += s[l * cc + t];
      partials[static_cast<int64_t>(blockIdx.x) * c + ch0 + t] = sum;
    }
    __syncthreads();
  }
}

// Pass 2: one thread per channel adds the block partials in block order.
__global__ void bias_grad_final_kernel(const double* __restrict__ partials, int64_t blocks,
                                       int64_t c, float* __restrict__ db) {
  for (int64_t k = thread_index(); k < c; k += grid_stride()) {
    double sum = 0.0;
    for (int64_t b = 0; b < blocks; ++b) sum += partials[b * c + k];
    db[k] = static_cast<float>(sum);
  }
}

void check_half(DType t, const char* op) {
  DQ_CHECK(t == DType::bf16 || t == DType::f16, op, ": expected a bf16 or fp16 type, got ",
           dtype_name(t));
}

}  // namespace

void cuda_bias_act(float* y, const float* b, int64_t m, int64_t c, bool relu, cudaStream_t s) {
  DQ_CHECK(m >= 0 && c > 0, "bias/ReLU epilogue of shape (", m, ", ", c, ")");
  const int64_t n = m * c;
  if (n == 0 || (!b && !relu)) return;
  DQ_LAUNCH(bias_act_kernel, grid_for(n), kThreads, 0, s)(y, b, n, c, relu);
  DQ_CUDA(cudaGetLastError());
}

void cuda_cast_from_f32(const float* x, void* y, DType to, int64_t n, cudaStream_t s) {
  check_half(to, "cuda_cast_from_f32");
  if (n <= 0) return;
  if (to == DType::f16)
    DQ_LAUNCH(cast_from_f32_kernel, grid_for(n), kThreads, 0, s)(x, static_cast<__half*>(y), n);
  else
    DQ_LAUNCH(cast_from_f32_kernel, grid_for(n), kThreads, 0, s)
    (x, static_cast<__nv_bfloat16*>(y), n);
  DQ_CUDA(cudaGetLastError());
}

void cuda_cast_to_f32_bias_act(const void* x, DType from, float* y, const float* b, int64_t m,
                               int64_t c, bool relu, cudaStream_t s) {
  check_half(from, "cuda_cast_to_f32_bias_act");
  DQ_CHECK(m >= 0 && c > 0, "cast epilogue of shape (", m, ", ", c, ")");
  const int64_t n = m * c;
  if (n == 0) return;
  if (from == DType::f16)
    DQ_LAUNCH(cast_to_f32_kernel, grid_for(n), kThreads, 0, s)
    (static_cast<const __half*>(x), y, b, n, c, relu);
  else
    DQ_LAUNCH(cast_to_f32_kernel, grid_for(n), kThreads, 0, s)
    (static_cast<const __nv_bfloat16*>(x), y, b, n, c, relu);
  DQ_CUDA(cudaGetLastError());
}

int64_t bias_grad_scratch_count(int64_t m, int64_t c) {
  return row_blocks(m).blocks * c;
}

void cuda_bias_grad(const float* dy, float* db, int64_t m, int64_t c, double* partials,
                    cudaStream_t s) {
  DQ_CHECK(m >= 0 && c > 0, "bias gradient of shape (", m, ", ", c, ")");
  if (m == 0) {
    DQ_CUDA(cudaMemsetAsync(db, 0, static_cast<size_t>(c) * sizeof(float), s));
    return;
  }
  RowBlocks rb = row_blocks(m);
  DQ_LAUNCH(bias_grad_partial_kernel, static_cast<unsigned>(rb.blocks), kThreads, 0, s)
  (dy, m, c, rb.rows, partials);
  DQ_CUDA(cudaGetLastError());
  DQ_LAUNCH(bias_grad_final_kernel, grid_for(c), kThreads, 0, s)(partials, rb.blocks, c, db);
  DQ_CUDA(cudaGetLastError());
}

}  // namespace dq
