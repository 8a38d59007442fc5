// MSE loss and its gradient with a deterministic reduction.
//
// Floating-point addition is not associative, so a reduction with atomics
// (or a grid sized by the SM count) gives a loss that changes in the last
// bits from run to run and from GPU to GPU, and a resumed run would not be
// bit-identical. Instead the sum is two passes whose order depends only on n:
//   1. a grid of min(ceil(n / 256), kMseMaxBlocks) blocks; each thread sums
//      its grid-stride elements in double, each block reduces its threads in
//      a fixed tree and writes one partial sum;
//   2. one block sums the partials in a fixed order and divides by n.
// The gradient is written in pass 1, which already reads every element.
#include <cstdint>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/nn/kernels.h"

namespace dq {

namespace {

using detail::kThreads;

// Sums s[0 .. kThreads) into s[0] in a fixed tree order; all threads call it.
__device__ void block_sum(double* s) {
  __syncthreads();
#pragma unroll
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    const int tid = static_cast<int>(threadIdx.x);
    if (tid < stride) s[tid] += s[tid + stride];
    __syncthreads();
  }
}

// pred and dpred may be the same buffer (each element is read before it is
// written by the same thread), so they are not __restrict__.
__global__ void __launch_bounds__(kThreads)
    mse_partial_kernel(const float* pred, const float* target, float* dpred, int64_t n,
                       float grad_scale, double* __restrict__ partials) {
  __shared__ double s[kThreads];
  double acc = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    float p = pred[i], t = target[i];
    double d = static_cast<double>(p) - static_cast<double>(t);  // exact in double
    acc += d * d;
    if (dpred) dpred[i] = grad_scale * (p - t);
  }
  s[threadIdx.x] = acc;
  block_sum(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s[0];
}

__global__ void __launch_bounds__(kThreads)
    mse_final_kernel(const double* __restrict__ partials, int count, int64_t n,
                     float* __restrict__ loss) {
  __shared__ double s[kThreads];
  double acc = 0.0;
  for (int i = static_cast<int>(threadIdx.x); i < count; i += kThreads) acc += partials[i];
  s[threadIdx.x] = acc;
  block_sum(s);
  if (threadIdx.x == 0) *loss = static_cast<float>(s[0] / static_cast<double>(n));
}

}  // namespace

void cuda_mse_loss(const float* pred, const float* target, float* dpred, int64_t n,
                   double* partials, float* loss, cudaStream_t s) {
  DQ_CHECK(n > 0, "MSE loss of an empty tensor");
  int64_t want = (n + kThreads - 1) / kThreads;
  int blocks = static_cast<int>(want < kMseMaxBlocks ? want : kMseMaxBlocks);
  // The same fp32 factor as the CPU backend, so dpred matches it bit for bit.
  float grad_scale = 2.0f / static_cast<float>(n);
  DQ_LAUNCH(mse_partial_kernel, blocks, kThreads, 0, s)
  (pred, target, dpred, n, grad_scale, partials);
  DQ_CUDA(cudaGetLastError());
  DQ_LAUNCH(mse_final_kernel, 1, kThreads, 0, s)(partials, blocks, n, loss);
  DQ_CUDA(cudaGetLastError());
}

}  // namespace dq
