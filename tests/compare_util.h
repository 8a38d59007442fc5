// Random inputs and the error measure every backend comparison uses:
// max |got - want| / max |want|, the error relative to the output's scale
// (a per-element ratio would blow up where a value cancels to near zero).
#pragma once
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <random>

#include "core/nn/backend.h"
#include "core/nn/tensor.h"

namespace dq::test {

inline double rel_error(const float* got, const float* want, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(double{got[i]} - double{want[i]}));
    den = std::max(den, std::fabs(double{want[i]}));
  }
  return num / std::max(den, 1e-30);
}

inline double rel_error(const Tensor& got, const Tensor& want) {
  REQUIRE(got.shape() == want.shape());
  return rel_error(got.f32(), want.f32(), want.numel());
}

// A host fp32 tensor of uniform values in [lo, hi) from a seeded generator.
inline Tensor random_tensor(const Shape& s, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  Tensor t = Tensor::zeros(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = u(rng);
  return t;
}

// A host tensor's copy on backend g's device, and a device tensor's copy on
// the host: how the GPU tests move operands across.
inline Tensor upload_to(Backend& g, const Tensor& host) {
  Tensor d = g.alloc(host.shape());
  g.upload(host, d);
  return d;
}

inline Tensor download_from(Backend& g, const Tensor& dev) {
  Tensor h = Tensor::zeros(dev.shape());
  g.download(dev, h);
  return h;
}

}  // namespace dq::test
