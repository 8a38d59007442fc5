// Backend::unscale_and_check on the CUDA backend against the CPU backend:
// the same gradients (sizes around the kernel's grid-stride boundaries) give
// bit-identical unscaled values (one fp32 multiply per element) and the
// same verdict, with inf, -inf or NaN at the first, a middle and the last
// element; and the policy (core/nn/loss_scale.h) driven by the CUDA verdicts
// backs off and grows as on the CPU.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/loss_scale.h"
#include "cuda/nn/cuda_backend.h"
#include "tests/compare_util.h"

using namespace dq;
using namespace dq::test;

namespace {

Tensor copy_of(const Tensor& t) {
  Tensor c = Tensor::zeros(t.shape());
  std::memcpy(c.raw(), t.raw(), t.nbytes());
  return c;
}

}  // namespace

TEST_CASE("cuda unscale_and_check matches the CPU backend bit for bit", "[gpu][ops][cudnn]") {
  auto cpu = make_cpu_backend();
  CudaBackendOptions opt;
  opt.precision = "fp16";
  opt.arena_bytes = size_t{64} << 20;
  auto gpu = make_cuda_backend(opt);
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t n : {int64_t{1}, int64_t{255}, int64_t{4097}, int64_t{1} << 20}) {
    // Scaled gradients, some tiny so that unscaling lands among denormals.
    Tensor g = random_tensor(Shape{n}, static_cast<uint32_t>(n), -3e4f, 3e4f);
    g.f32()[n / 2] = 1e-36f;
    for (float inv : {1.0f / 65536.0f, 1.0f / 3.0f, 1.0f}) {
      INFO("n " << n << ", inv_scale " << inv);
      Tensor want = copy_of(g);
      Tensor dev = upload_to(*gpu, g);
      CHECK(cpu->unscale_and_check(want, inv));
      CHECK(gpu->unscale_and_check(dev, inv));
      CHECK(std::memcmp(download_from(*gpu, dev).raw(), want.raw(), want.nbytes()) == 0);
    }
    for (float bad : {inf, -inf, std::nanf("")}) {
      for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
        INFO("n " << n << ", " << bad << " at " << at);
        Tensor b = copy_of(g);
        b.f32()[at] = bad;
        Tensor want = copy_of(b);
        Tensor dev = upload_to(*gpu, b);
        CHECK_FALSE(cpu->unscale_and_check(want, 0.5f));
        CHECK_FALSE(gpu->unscale_and_check(dev, 0.5f));
      }
    }
    // Overflow made by the multiply itself counts too.
    Tensor big = copy_of(g);
    big.f32()[0] = 3e38f;
    Tensor dev = upload_to(*gpu, big);
    CHECK_FALSE(cpu->unscale_and_check(big, 2.0f));
    CHECK_FALSE(gpu->unscale_and_check(dev, 2.0f));
  }
  // Wrong device or dtype is refused like on the CPU.
  Tensor host = Tensor::zeros(Shape{4});
  CHECK_THROWS_AS(gpu->unscale_and_check(host, 1.0f), Error);
  Tensor half = gpu->alloc(Shape{4}, DType::f16);
  CHECK_THROWS_AS(gpu->unscale_and_check(half, 1.0f), Error);
}

TEST_CASE("the loss-scale policy driven by cuda verdicts backs off and grows", "[gpu][ops][cudnn]") {
  auto gpu = make_cuda_backend();
  LossScaleConfig cfg;
  cfg.initial_scale = 1024.0f;
  cfg.growth_interval = 3;
  LossScaler scaler(cfg);
  Tensor h = random_tensor(Shape{5000}, 3);
  Tensor scaled = copy_of(h);
  for (int64_t i = 0; i < h.numel(); ++i) scaled.f32()[i] *= 1024.0f;
  Tensor g = upload_to(*gpu, scaled);
  REQUIRE(gpu->unscale_and_check(g, 1.0f / scaler.scale()));
  CHECK(std::memcmp(download_from(*gpu, g).raw(), h.raw(), h.nbytes()) == 0);  // 1024 is exact
  for (int i = 0; i < 3; ++i) CHECK(scaler.update(true));
  CHECK(scaler.scale() == 2048.0f);
  scaled.f32()[4321] = std::numeric_limits<float>::infinity();
  Tensor bad = upload_to(*gpu, scaled);
  CHECK_FALSE(scaler.update(gpu->unscale_and_check(bad, 1.0f / scaler.scale())));
  CHECK(scaler.scale() == 1024.0f);
  CHECK(scaler.skipped_steps() == 1);
}
