#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/kernels.h"
#include "cuda/loss_scale.h"

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
  unscale_check_kernel<<<grid_for(n), kThreads, 0, s>>>(grads, n, inv_scale, flag);
  DQ_CUDA(cudaGetLastError());
}

LossScaler::LossScaler(const LossScaleConfig& cfg, cudaStream_t stream)
    : cfg_(cfg), stream_(stream), scale_(cfg.initial_scale), flag_(sizeof(int)) {
  if (!(cfg.initial_scale >= cfg.min_scale && cfg.initial_scale <= cfg.max_scale &&
        cfg.min_scale > 0.0f))
    fail("loss scale: initial scale ", cfg.initial_scale, " must lie in [min_scale ", cfg.min_scale,
         ", max_scale ", cfg.max_scale, "] with min_scale > 0");
  if (!(cfg.growth_factor >= 1.0f && cfg.backoff_factor > 0.0f && cfg.backoff_factor < 1.0f &&
        cfg.growth_interval >= 1))
    fail("loss scale: need growth_factor >= 1, 0 < backoff_factor < 1 and growth_interval >= 1");
}

bool LossScaler::unscale_and_check(Tensor& grads) {
  DQ_CHECK(grads.device() == Device::cuda && grads.dtype() == DType::f32,
           "loss scale: gradients must be an fp32 cuda tensor, got ", dtype_name(grads.dtype()),
           " on ", device_name(grads.device()));
  int* flag = static_cast<int*>(flag_.data());
  DQ_CUDA(cudaMemsetAsync(flag, 0, sizeof(int), stream_));
  cuda_unscale_check(static_cast<float*>(grads.raw()), grads.numel(), 1.0f / scale_, flag, stream_);
  int host = 0;
  DQ_CUDA(cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, stream_));
  DQ_CUDA(cudaStreamSynchronize(stream_));
  return host == 0;
}

bool LossScaler::update(bool finite) {
  if (!finite) {
    scale_ = std::max(cfg_.min_scale, scale_ * cfg_.backoff_factor);
    clean_ = 0;
    ++skipped_;
    return false;
  }
  if (++clean_ >= cfg_.growth_interval) {
    scale_ = std::min(cfg_.max_scale, scale_ * cfg_.growth_factor);
    clean_ = 0;
  }
  return true;
}

}  // namespace dq
