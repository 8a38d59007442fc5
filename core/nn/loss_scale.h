// The loss-scaling policy for fp16 training (PyTorch's GradScaler scheme),
// kept on the host and apart from any backend so the CPU tests cover it.
//
// fp16 gradients underflow to zero below ~6e-8, so the loss gradient is
// multiplied by a large scale S before the backward pass and the parameter
// gradients by 1/S after it (Backend::unscale_and_check). When S is too
// large some gradient overflows to inf (or becomes NaN): that step is
// skipped and S multiplied by backoff_factor; after growth_interval clean
// steps in a row, S is multiplied by growth_factor. A static scaler keeps S
// fixed and only skips. One step of the trainer (train/trainer.cpp):
//
//   float loss = be.mse_loss(pred, target, &dpred);
//   be.scale(dpred, scaler.scale());                 // before backward
//   net.backward(be, params, dpred, grads);          // then the all-reduce
//   bool finite = be.unscale_and_check(grads, 1.0f / scaler.scale());
//   if (scaler.update(finite)) be.adam_step(params, grads, m, v, adam, t);
//
// Skipped steps do not advance Adam's step count t. bf16 has fp32's
// exponent range and needs no scaling; fp32 and tf32 neither.
#pragma once
#include <cstdint>

namespace dq {

struct LossScaleConfig {
  bool dynamic = true;             // false: the scale stays initial_scale (only skips)
  float initial_scale = 65536.0f;  // 2^16, PyTorch's default
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int64_t growth_interval = 2000;  // clean steps in a row before the scale grows
  float min_scale = 1.0f;          // backoff stops here
  // Growth stops here (apex's cap), or at initial_scale if that is larger:
  // beyond it fp16 gradients overflow at once, so growing only buys skips;
  // a run that asks to start higher has gradients that need it.
  float max_scale = 16777216.0f;  // 2^24
};

// What a checkpoint must carry for a resumed run to continue exactly.
struct LossScaleState {
  float scale = 0.0f;         // current scale
  int64_t clean_steps = 0;    // clean steps since the scale last changed
  int64_t skipped_steps = 0;  // steps skipped over the whole run
};

class LossScaler {
 public:
  // Refuses inconsistent settings (a scale outside [min_scale, 2^127], a
  // growth factor below 1, ...) with a message naming the setting.
  explicit LossScaler(const LossScaleConfig& cfg);

  float scale() const { return state_.scale; }
  int64_t clean_steps() const { return state_.clean_steps; }
  int64_t skipped_steps() const { return state_.skipped_steps; }
  const LossScaleState& state() const { return state_; }
  void restore(const LossScaleState& s);  // from a checkpoint; checked like the config

  // Records a step's outcome and adjusts the scale; returns whether the
  // optimiser should apply the step (i.e. `finite`).
  bool update(bool finite);

 private:
  LossScaleConfig cfg_;
  LossScaleState state_;
};

}  // namespace dq
