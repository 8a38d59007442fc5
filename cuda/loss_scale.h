// Dynamic loss scaling for fp16 training. fp16 gradients underflow to zero
// below ~6e-8, so the loss gradient is multiplied by a large scale S before
// the backward pass and the parameter gradients divided by S after it. When
// S is too large some gradient overflows to inf (or becomes NaN): that step
// is skipped and S halved; after `growth_interval` clean steps in a row, S
// doubles. This is the scheme of PyTorch's GradScaler.
//
// One training step with the Backend interface (dpred from mse_loss):
//
//   float loss = be.mse_loss(pred, target, &dpred);
//   be.scale(dpred, scaler.scale());            // before backward
//   net.backward(be, params, dpred, grads);
//   bool finite = scaler.unscale_and_check(grads);
//   if (scaler.update(finite)) be.adam_step(params, grads, m, v, adam, ++adam_step);
//
// Skipped steps do not advance Adam's step count. bf16 has fp32's exponent
// range and needs no scaling; fp32 and tf32 neither.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/tensor.h"
#include "cuda/memory.h"

namespace dq {

struct LossScaleConfig {
  float initial_scale = 65536.0f;  // 2^16, PyTorch's default
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int growth_interval = 2000;  // clean steps before the scale grows
  float min_scale = 1.0f;
  float max_scale = 16777216.0f;  // 2^24: beyond it fp32 gradient sums lose bits
};

class LossScaler {
 public:
  // `stream` should be the backend's (cuda_stream(be)); the legacy default
  // stream (nullptr) also orders correctly with it.
  explicit LossScaler(const LossScaleConfig& cfg = {}, cudaStream_t stream = nullptr);

  float scale() const { return scale_; }
  int64_t skipped_steps() const { return skipped_; }

  // grads *= 1 / scale() in place (fp32 cuda tensor); returns whether every
  // element is finite. Waits for the stream (four bytes come back).
  bool unscale_and_check(Tensor& grads);

  // Records a step's outcome and adjusts the scale; returns whether the
  // optimiser should apply the step (i.e. `finite`).
  bool update(bool finite);

 private:
  LossScaleConfig cfg_;
  cudaStream_t stream_;
  float scale_;
  int clean_ = 0;
  int64_t skipped_ = 0;
  DeviceBuffer flag_;  // one int: set when a non-finite gradient is seen
};

// grads[i] *= inv_scale; *flag = 1 when any result is not finite. Exposed
// for tests; flag must be zeroed by the caller.
void cuda_unscale_check(float* grads, int64_t n, float inv_scale, int* flag, cudaStream_t s);

}  // namespace dq
