// Loss scaling: the host policy (core/nn/loss_scale.h), the CPU backend's
// unscale_and_check (the spec the CUDA kernel is tested against in
// tests/gpu/test_loss_scale_gpu.cpp), and the trainer driving them: in fp32
// a power-of-two scale changes no bit of the run, and a scale so large that
// the gradients overflow skips steps and halves until training proceeds.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "core/nn/checkpoint.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/loss_scale.h"
#include "tests/train_util.h"
#include "train/trainer.h"

using namespace dq;
using namespace dq::test;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

TEST_CASE("Loss scaler backs off on overflow and grows after clean steps", "[loss_scale]") {
  LossScaleConfig cfg;
  cfg.initial_scale = 1024.0f;
  cfg.growth_interval = 3;
  LossScaler s(cfg);
  CHECK(s.scale() == 1024.0f);

  SECTION("growth needs growth_interval clean steps in a row") {
    CHECK(s.update(true));
    CHECK(s.update(true));
    CHECK(s.scale() == 1024.0f);
    CHECK(s.clean_steps() == 2);
    CHECK(s.update(true));
    CHECK(s.scale() == 2048.0f);
    CHECK(s.clean_steps() == 0);
    CHECK(s.skipped_steps() == 0);
  }
  SECTION("an overflow halves the scale, skips and restarts the count") {
    CHECK(s.update(true));
    CHECK(s.update(true));
    CHECK_FALSE(s.update(false));
    CHECK(s.scale() == 512.0f);
    CHECK(s.clean_steps() == 0);
    CHECK(s.skipped_steps() == 1);
    CHECK(s.update(true));
    CHECK(s.update(true));
    CHECK(s.scale() == 512.0f);  // the two clean steps before the overflow do not count
    CHECK(s.update(true));
    CHECK(s.scale() == 1024.0f);
  }
}

TEST_CASE("Loss scale stays within its bounds", "[loss_scale]") {
  LossScaleConfig cfg;
  cfg.growth_interval = 1;
  SECTION("backoff stops at min_scale") {
    cfg.initial_scale = 2.0f;
    LossScaler s(cfg);
    CHECK_FALSE(s.update(false));
    CHECK(s.scale() == 1.0f);
    CHECK_FALSE(s.update(false));
    CHECK(s.scale() == 1.0f);
    CHECK(s.skipped_steps() == 2);
  }
  SECTION("growth stops at max_scale") {
    cfg.initial_scale = cfg.max_scale / 2;
    LossScaler s(cfg);
    CHECK(s.update(true));
    CHECK(s.scale() == cfg.max_scale);
    CHECK(s.update(true));
    CHECK(s.scale() == cfg.max_scale);
  }
  SECTION("an initial scale above max_scale becomes the cap") {
    cfg.initial_scale = 0x1p100f;
    LossScaler s(cfg);
    CHECK(s.update(true));
    CHECK(s.scale() == 0x1p100f);
    CHECK_FALSE(s.update(false));
    CHECK(s.scale() == 0x1p99f);
    CHECK(s.update(true));
    CHECK(s.scale() == 0x1p100f);
    CHECK(s.update(true));
    CHECK(s.scale() == 0x1p100f);
  }
  SECTION("a static scaler never changes the scale but still skips") {
    cfg.dynamic = false;
    cfg.initial_scale = 4096.0f;
    LossScaler s(cfg);
    CHECK(s.update(true));
    CHECK_FALSE(s.update(false));
    CHECK(s.scale() == 4096.0f);
    CHECK(s.skipped_steps() == 1);
  }
  SECTION("inconsistent settings and states are refused") {
    LossScaleConfig bad = cfg;
    bad.initial_scale = 0.5f;
    CHECK_THROWS_WITH(LossScaler(bad), Contains("initial scale"));
    bad = cfg;
    bad.initial_scale = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(LossScaler(bad), Error);
    bad = cfg;
    bad.backoff_factor = 1.0f;
    CHECK_THROWS_WITH(LossScaler(bad), Contains("backoff_factor"));
    bad = cfg;
    bad.growth_interval = 0;
    CHECK_THROWS_WITH(LossScaler(bad), Contains("growth_interval"));
    LossScaler s(cfg);
    LossScaleState st;  // scale 0: no state
    CHECK_THROWS_WITH(s.restore(st), Contains("restored scale"));
    st.scale = 8.0f;
    st.clean_steps = 3;
    st.skipped_steps = 5;
    s.restore(st);
    CHECK(s.scale() == 8.0f);
    CHECK(s.clean_steps() == 3);
    CHECK(s.skipped_steps() == 5);
  }
}

TEST_CASE("CPU unscale_and_check multiplies and reports non-finite values", "[loss_scale]") {
  auto cpu = make_cpu_backend();
  // Large enough that the CPU backend splits it over threads.
  const int64_t n = int64_t{1} << 20;
  Tensor g = Tensor::zeros(Shape{n});
  for (int64_t i = 0; i < n; ++i) g.f32()[i] = static_cast<float>(i % 1000 - 500) * 64.0f;
  CHECK(cpu->unscale_and_check(g, 1.0f / 64.0f));
  bool exact = true;
  for (int64_t i = 0; i < n; ++i) exact = exact && g.f32()[i] == static_cast<float>(i % 1000 - 500);
  CHECK(exact);
  const float inf = std::numeric_limits<float>::infinity();
  for (float bad : {inf, -inf, std::nanf("")}) {
    for (int64_t at : {int64_t{0}, n / 2 + 1, n - 1}) {
      g.f32()[at] = bad;
      CHECK_FALSE(cpu->unscale_and_check(g, 0.5f));
      g.f32()[at] = 1.0f;
    }
  }
  CHECK(cpu->unscale_and_check(g, 1.0f));
  // The multiply itself can overflow.
  g.f32()[7] = 3e38f;
  CHECK_FALSE(cpu->unscale_and_check(g, 2.0f));
}

namespace {

TrainConfig tiny(const std::string& out) {
  TrainConfig cfg = tiny_run(out);
  cfg.steps = 6;
  cfg.checkpoint_every = 1;
  cfg.keep_checkpoints = 10;
  return cfg;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

std::vector<nlohmann::json> log_events(const TrainConfig& cfg, const std::string& event) {
  std::ifstream in(fs::path(cfg.out_dir) / cfg.log_file);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.value("event", "") == event) out.push_back(j);
  }
  return out;
}

}  // namespace

TEST_CASE("fp32 training with a power-of-two loss scale changes no bit", "[loss_scale][train]") {
  // Scaling dpred by 2^k and the gradients by 2^-k is exact in binary
  // floating point, and every op of the backward pass is linear in dy, so
  // each intermediate is the unscaled one times 2^k exactly. The growth
  // interval of 2 makes the scale change during the run.
  TrainConfig off = tiny("deepqsm-test-ls-off");
  off.loss_scale = "off";
  TrainConfig dyn = tiny("deepqsm-test-ls-dynamic");
  dyn.loss_scale = "dynamic";
  dyn.loss_scale_growth_interval = 2;
  const TrainResult a = run_training(off, quiet());
  const TrainResult b = run_training(dyn, quiet());
  CHECK(a.loss_scale == 0);
  CHECK(b.loss_scale == 65536.0 * 8);  // grew after steps 2, 4 and 6
  CHECK(b.skipped_steps == 0);
  CHECK(a.final_loss == b.final_loss);
  const CheckpointData ca = load_checkpoint(a.checkpoint), cb = load_checkpoint(b.checkpoint);
  CHECK(same_bytes(ca.params, cb.params));
  CHECK(same_bytes(ca.adam_m, cb.adam_m));
  CHECK(same_bytes(ca.adam_v, cb.adam_v));
  CHECK(ca.state.loss_scale.scale == 0.0f);
  CHECK(cb.state.loss_scale.scale == 65536.0f * 8);
}

TEST_CASE("An overflowing loss scale skips steps and halves until training proceeds",
          "[loss_scale][train]") {
  TrainConfig cfg = tiny("deepqsm-test-ls-overflow");
  cfg.loss_scale = "dynamic";
  cfg.loss_scale_init = 0x1p127f;
  // fp32 gradients overflow only beyond 3.4e38 / scale: targets of +-100 ppm
  // make them large enough to overflow at the first few scales.
  cfg.data.chi_min = -100.0;
  cfg.data.chi_max = 100.0;
  cfg.steps = 30;
  cfg.keep_checkpoints = 100;  // every step's, to look inside the skipped ones
  const TrainResult r = run_training(cfg, quiet());
  const std::vector<nlohmann::json> skips = log_events(cfg, "skipped step");
  INFO("skipped " << r.skipped_steps << " steps, scale now " << r.loss_scale);
  REQUIRE(r.skipped_steps >= 1);
  REQUIRE(r.skipped_steps < cfg.steps);
  REQUIRE(static_cast<int64_t>(skips.size()) == r.skipped_steps);
  // The first steps are the skipped ones, each at half the previous scale.
  for (size_t i = 0; i < skips.size(); ++i) {
    CHECK(skips[i]["step"] == static_cast<int64_t>(i) + 1);
    CHECK(skips[i]["loss_scale"].get<double>() == std::ldexp(1.0, 127 - static_cast<int>(i)));
    CHECK(skips[i]["next_loss_scale"].get<double>() == std::ldexp(1.0, 126 - static_cast<int>(i)));
    CHECK(skips[i]["skipped_steps"] == static_cast<int64_t>(i) + 1);
  }
  CHECK(r.loss_scale == std::ldexp(1.0, 127 - static_cast<int>(r.skipped_steps)));
  CHECK(std::isfinite(r.final_loss));

  // The skipped steps left weights and moments alone ...
  const int64_t k = r.skipped_steps;
  auto at = [&](int64_t step) {
    char name[64];
    std::snprintf(name, sizeof name, "/checkpoint-%08lld.h5", static_cast<long long>(step));
    return load_checkpoint(cfg.out_dir + name);
  };
  const CheckpointData first = at(1), last_skipped = at(k), applied = at(k + 1);
  CHECK(same_bytes(first.params, last_skipped.params));
  const float* m = last_skipped.adam_m.f32();
  CHECK(std::all_of(m, m + last_skipped.adam_m.numel(), [](float x) { return x == 0.0f; }));
  CHECK(last_skipped.state.loss_scale.skipped_steps == k);
  // ... and Adam's step count: the first applied step is Adam's step 1,
  // whose bias correction moves every weight by lr g / (|g| + eps), i.e. by
  // lr where |g| >> eps (with step k + 1 it would move them by 0.5 to 0.8 lr).
  int64_t moved = 0;
  for (int64_t i = 0; i < applied.params.numel(); ++i) {
    if (std::fabs(applied.adam_m.f32()[i]) < 1e-5f) continue;  // |g| < 1e-4
    const double d = std::fabs(double{applied.params.f32()[i]} - last_skipped.params.f32()[i]);
    REQUIRE(d == Approx(cfg.optim.lr).epsilon(1e-3));
    ++moved;
  }
  CHECK(moved > applied.params.numel() / 4);
  CHECK(applied.state.loss_scale.skipped_steps == k);
  CHECK(applied.state.loss_scale.scale ==
        static_cast<float>(std::ldexp(1.0, 127 - static_cast<int>(k))));
}

TEST_CASE("fp16 is refused on the CPU backend with one line", "[loss_scale][train]") {
  TrainConfig cfg = tiny("deepqsm-test-ls-fp16");
  cfg.precision = "fp16";
  try {
    run_training(cfg, quiet());
    FAIL("fp16 on the CPU was accepted");
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK_THAT(msg, Contains("train.precision \"fp16\"") && Contains("fp32 only") &&
                        Contains("train.device \"gpu\""));
    CHECK(msg.find('\n') == std::string::npos);
  }
}
