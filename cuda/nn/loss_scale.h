// The CUDA side of loss scaling: the kernel behind
// Backend::unscale_and_check (cuda/nn/cuda_backend.cpp). The policy that picks
// the scale lives on the host, in core/nn/loss_scale.h.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace dq {

// grads[i] *= inv_scale; *flag = 1 when any result is not finite. Queued on
// `s`; flag must be zeroed by the caller (on `s` or before it).
void cuda_unscale_check(float* grads, int64_t n, float inv_scale, int* flag, cudaStream_t s);

}  // namespace dq
