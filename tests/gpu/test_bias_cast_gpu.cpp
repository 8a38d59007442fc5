// The bias/ReLU epilogue, the precision casts, the bias gradient and the
// loss scale's unscale-and-check, called directly (the CUDA backend calls
// them around cuDNN), against plain host loops and CUDA's documented
// rounding: round to nearest even, NaN to 0x7fff, overflow to infinity.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cuda/check.h"
#include "cuda/memory.h"
#include "cuda/nn/bias.h"
#include "cuda/nn/loss_scale.h"

using namespace dq;

namespace {

template <typename T>
DeviceBuffer upload(const std::vector<T>& v) {
  DeviceBuffer d(v.size() * sizeof(T));
  DQ_CUDA(cudaMemcpy(d.data(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <typename T>
std::vector<T> download(const DeviceBuffer& d, size_t n) {
  std::vector<T> v(n);
  DQ_CUDA(cudaMemcpy(v.data(), d.data(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}
float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// (value, half bits, bfloat16 bits): ties, subnormals, overflow, signs, NaN.
struct Case {
  float v;
  uint16_t f16, bf16;
};
const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {1.0f, 0x3c00, 0x3f80},
      {-2.0f, 0xc000, 0xc000},
      {0.0f, 0x0000, 0x0000},
      {-0.0f, 0x8000, 0x8000},
      {1.0f + 0x1p-11f, 0x3c00, 0x3f80},      // half tie: to even
      {1.0f + 3 * 0x1p-11f, 0x3c02, 0x3f80},  // half tie: up to even
      {1.0f + 0x1p-8f, 0x3c04, 0x3f80},       // bf16 tie: to even
      {1.0f + 3 * 0x1p-8f, 0x3c0c, 0x3f82},   // bf16 tie: up to even
      {65504.0f, 0x7bff, 0x4780},             // largest half
      {65520.0f, 0x7c00, 0x4780},             // rounds to half infinity
      {0x1p-24f, 0x0001, 0x3380},             // smallest half subnormal
      {0x1p-25f, 0x0000, 0x3300},             // tie to even zero
      {1.5f * 0x1p-25f, 0x0001, 0x3340},
      {3.0f * 0x1p-16f, 0x0300, 0x3840},  // half subnormal, exact
      {std::numeric_limits<float>::max(), 0x7c00, 0x7f80},
      {-std::numeric_limits<float>::infinity(), 0xfc00, 0xff80},
      {std::numeric_limits<float>::quiet_NaN(), 0x7fff, 0x7fff},
  };
  return c;
}

}  // namespace

TEST_CASE("cuda casts to half and bfloat16 round as CUDA documents", "[gpu]") {
  std::vector<float> x;
  for (const Case& c : cases()) x.push_back(c.v);
  const size_t n = x.size();
  DeviceBuffer dx = upload(x), dh(n * 2), db(n * 2);
  cuda_cast_from_f32(static_cast<const float*>(dx.data()), dh.data(), DType::f16,
                     static_cast<int64_t>(n), nullptr);
  cuda_cast_from_f32(static_cast<const float*>(dx.data()), db.data(), DType::bf16,
                     static_cast<int64_t>(n), nullptr);
  const std::vector<uint16_t> h = download<uint16_t>(dh, n), b = download<uint16_t>(db, n);
  for (size_t i = 0; i < n; ++i) {
    INFO("value " << x[i]);
    CHECK(h[i] == cases()[i].f16);
    CHECK(b[i] == cases()[i].bf16);
  }
}

TEST_CASE("cuda widening with bias and ReLU, and the fp32 epilogue, match host loops", "[gpu]") {
  const int64_t m = 300, c = 7, n = m * c;  // n not a multiple of the block size
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> y(n), bias(c);
  for (float& v : y) v = u(rng);
  for (float& v : bias) v = u(rng);
  // bf16 values near y, built exactly: the top 16 bits of each float.
  std::vector<uint16_t> y_bf16(n);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &y[i], 4);
    y_bf16[i] = static_cast<uint16_t>(bits >> 16);
  }
  DeviceBuffer d_bias = upload(bias), d_yb = upload(y_bf16), out(n * sizeof(float));
  for (bool relu : {false, true}) {
    cuda_cast_to_f32_bias_act(d_yb.data(), DType::bf16, static_cast<float*>(out.data()),
                              static_cast<const float*>(d_bias.data()), m, c, relu, nullptr);
    const std::vector<float> got = download<float>(out, n);
    for (int64_t i = 0; i < n; ++i) {
      float v = from_bits(static_cast<uint32_t>(y_bf16[i]) << 16) + bias[i % c];
      if (relu && !(v > 0.0f)) v = 0.0f;
      REQUIRE(got[i] == v);
    }
    DeviceBuffer d_y = upload(y);
    cuda_bias_act(static_cast<float*>(d_y.data()), static_cast<const float*>(d_bias.data()), m, c,
                  relu, nullptr);
    const std::vector<float> act = download<float>(d_y, n);
    for (int64_t i = 0; i < n; ++i) {
      float v = y[i] + bias[i % c];
      if (relu && !(v > 0.0f)) v = 0.0f;
      REQUIRE(act[i] == v);
    }
  }
  // Half: a round trip through the cast kernels is exact for values that are halves.
  std::vector<float> halves(n);
  for (int64_t i = 0; i < n; ++i) halves[i] = std::ldexp(std::round(std::ldexp(y[i], 9)), -9);
  DeviceBuffer d_h = upload(halves), d_16(n * 2);
  cuda_cast_from_f32(static_cast<const float*>(d_h.data()), d_16.data(), DType::f16, n, nullptr);
  cuda_cast_to_f32_bias_act(d_16.data(), DType::f16, static_cast<float*>(out.data()), nullptr, m, c,
                            false, nullptr);
  CHECK(download<float>(out, n) == halves);
}

TEST_CASE("cuda bias gradient sums dy per channel, deterministically", "[gpu]") {
  for (int64_t m : {int64_t{1}, int64_t{1000}, int64_t{70000}}) {
    const int64_t c = 5;
    std::mt19937 rng(static_cast<unsigned>(m));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> dy(m * c);
    for (float& v : dy) v = u(rng);
    std::vector<double> want(c, 0.0);
    for (int64_t i = 0; i < m * c; ++i) want[i % c] += dy[i];
    DeviceBuffer d_dy = upload(dy), d_db(c * sizeof(float)),
                 partials(static_cast<size_t>(bias_grad_scratch_count(m, c)) * sizeof(double));
    std::vector<float> first;
    for (int run = 0; run < 2; ++run) {
      cuda_bias_grad(static_cast<const float*>(d_dy.data()), static_cast<float*>(d_db.data()), m, c,
                     static_cast<double*>(partials.data()), nullptr);
      const std::vector<float> db = download<float>(d_db, c);
      for (int64_t k = 0; k < c; ++k) CHECK(db[k] == Approx(want[k]).epsilon(1e-6).margin(1e-6));
      if (run == 0)
        first = db;
      else
        CHECK(std::memcmp(first.data(), db.data(), c * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("cuda unscale-and-check scales every gradient and flags a non-finite one", "[gpu]") {
  const int64_t n = 5000;
  std::vector<float> g(n);
  for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(i % 97) - 48.0f;
  for (bool poison : {false, true}) {
    std::vector<float> in = g;
    if (poison) in[4321] = std::numeric_limits<float>::infinity();
    DeviceBuffer d = upload(in), flag = upload(std::vector<int>{0});
    cuda_unscale_check(static_cast<float*>(d.data()), n, 0.125f, static_cast<int*>(flag.data()),
                       nullptr);
    const std::vector<float> out = download<float>(d, n);
    for (int64_t i = 0; i < n; ++i)
      if (i != 4321 || !poison) REQUIRE(out[i] == in[i] * 0.125f);
    CHECK(download<int>(flag, 1)[0] == (poison ? 1 : 0));
  }
}
