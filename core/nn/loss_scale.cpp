#include "core/nn/loss_scale.h"

#include <algorithm>

#include "core/error.h"

namespace dq {

namespace {
// The largest power of two a float holds; a scale beyond it is inf.
constexpr float kMaxScale = 1.7014118e38f;  // 2^127

void check_scale(float s, const LossScaleConfig& cfg, const char* what) {
  if (!(s >= cfg.min_scale && s <= kMaxScale))
    fail("loss scale: ", what, " ", s, " must lie in [min_scale ", cfg.min_scale, ", 2^127]");
}
}  // namespace

LossScaler::LossScaler(const LossScaleConfig& cfg) : cfg_(cfg) {
  if (!(cfg.min_scale > 0.0f && cfg.min_scale <= cfg.max_scale && cfg.max_scale <= kMaxScale))
    fail("loss scale: need 0 < min_scale ", cfg.min_scale, " <= max_scale ", cfg.max_scale,
         " <= 2^127");
  check_scale(cfg.initial_scale, cfg, "initial scale");
  if (!(cfg.growth_factor >= 1.0f && cfg.backoff_factor > 0.0f && cfg.backoff_factor < 1.0f &&
        cfg.growth_interval >= 1))
    fail("loss scale: need growth_factor ", cfg.growth_factor, " >= 1, 0 < backoff_factor ",
         cfg.backoff_factor, " < 1 and growth_interval ", cfg.growth_interval, " >= 1");
  cfg_.max_scale = std::max(cfg.max_scale, cfg.initial_scale);
  state_.scale = cfg.initial_scale;
}

void LossScaler::restore(const LossScaleState& s) {
  check_scale(s.scale, cfg_, "restored scale");
  if (s.clean_steps < 0 || s.skipped_steps < 0)
    fail("loss scale: restored step counts ", s.clean_steps, ", ", s.skipped_steps,
         " must be >= 0");
  state_ = s;
}

bool LossScaler::update(bool finite) {
  if (!finite) {
    ++state_.skipped_steps;
    state_.clean_steps = 0;
    if (cfg_.dynamic) state_.scale = std::max(cfg_.min_scale, state_.scale * cfg_.backoff_factor);
    return false;
  }
  if (cfg_.dynamic && ++state_.clean_steps >= cfg_.growth_interval) {
    state_.scale = std::min(cfg_.max_scale, state_.scale * cfg_.growth_factor);
    state_.clean_steps = 0;
  }
  return true;
}

}  // namespace dq
