// The unscale-and-check kernel (cuda/nn/loss_scale.h).
#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/nn/kernels.h"
#include "cuda/nn/loss_scale.h"

namespace dq {

namespace {

using detail::grid_for;
using detail::kThreads;

// Every thread that meets a non-finite value stores the same 1, so the
// unsynchronised stores are benign.
__global__ void unscale_check_kernel(float* g, int64_t n, float inv_scale, int* flag) {
  bool bad = false;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = g[i] * inv_scale;
    g[i] = v;
    bad = bad || !isfinite(v);
  }
  if (bad) *flag = 1;
}

}  // namespace

void cuda_unscale_check(float* grads, int64_t n, float inv_scale, int* flag, cudaStream_t s) {
  if (n <= 0) return;
  DQ_LAUNCH(unscale_check_kernel, grid_for(n), kThreads, 0, s)(grads, n, inv_scale, flag);
  DQ_CUDA(cudaGetLastError());
}

}  // namespace dq
