// The hand-written CUDA kernels (cuda/nn/kernels.h) against the CPU backend,
// op by op, on the same random inputs; and the device memory helpers.
// Copies, ReLU, dropout masks and max-pool must match exactly; arithmetic to
// an fp32 relative error of 1e-5 (MSE and Adam 1e-6), measured as
// max |gpu - cpu| / max |cpu| over the tensor. Sizes are odd and some
// pointers are offset by one float, so the scalar tails and the non-float4
// paths run as well as the vector ones.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/nn/backend.h"
#include "core/nn/cpu/cpu_backend.h"
#include "cuda/check.h"
#include "cuda/memory.h"
#include "cuda/nn/kernels.h"
#include "tests/compare_util.h"

using namespace dq;
using namespace dq::test;

namespace {

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

float* dev(Tensor& t) {
  return static_cast<float*>(t.raw());
}

// A device copy of `host` that starts one float past a 16-byte boundary, so
// the kernels must take their unaligned (scalar) path.
Tensor to_device_misaligned(const Tensor& host) {
  Tensor big = cuda_zeros(Shape{host.numel() + 1});
  Tensor view = big.slice(1, host.shape());
  copy_to_device(host, view);
  return view;
}

Tensor host_copy(const Tensor& t) {
  Tensor c = Tensor::zeros(t.shape(), t.dtype());
  std::memcpy(c.raw(), t.raw(), t.nbytes());
  return c;
}

}  // namespace

TEST_CASE("device memory: round trips, arena alignment and overflow", "[gpu]") {
  Tensor h = random_tensor(Shape{3, 5, 7}, 1);
  Tensor d = to_device(h);
  CHECK(d.device() == Device::cuda);
  CHECK(bitwise_equal(to_host(d), h));

  Tensor hb = Tensor::zeros(Shape{9}, DType::bf16);
  for (int i = 0; i < 9; ++i) static_cast<uint16_t*>(hb.raw())[i] = float_to_bf16(0.5f * i);
  CHECK(bitwise_equal(to_host(to_device(hb)), hb));

  Tensor z = to_host(cuda_zeros(Shape{2, 4, 4, 4, 3}));
  CHECK(std::all_of(z.f32(), z.f32() + z.numel(), [](float v) { return v == 0.0f; }));

  Arena arena(4096);
  void* a = arena.allocate(10);
  void* b = arena.allocate(1);
  CHECK(reinterpret_cast<uintptr_t>(a) % Arena::kAlignment == 0);
  CHECK(reinterpret_cast<uintptr_t>(b) % Arena::kAlignment == 0);
  CHECK(static_cast<char*>(b) - static_cast<char*>(a) == static_cast<ptrdiff_t>(Arena::kAlignment));
  Tensor t = arena.tensor(Shape{4, 4});
  copy_to_device(h.slice(0, Shape{4, 4}), t);
  CHECK(bitwise_equal(to_host(t), h.slice(0, Shape{4, 4})));
  CHECK_THROWS_AS(arena.allocate(4096), Error);
  size_t peak = arena.peak();
  arena.reset();
  CHECK(arena.used() == 0);
  CHECK(arena.allocate(1) == a);
  CHECK(arena.peak() == peak);
}

TEST_CASE("cuda fill, copy, axpy and scale match the CPU backend", "[gpu]") {
  auto cpu = make_cpu_backend();
  for (int64_t n : {int64_t{1}, int64_t{1003}, int64_t{1} << 20}) {
    for (bool misaligned : {false, true}) {
      CAPTURE(n, misaligned);
      Shape s{n};
      Tensor x = random_tensor(s, 2), y = random_tensor(s, 3);
      auto up = [&](const Tensor& h) {
        return misaligned ? to_device_misaligned(h) : to_device(h);
      };

      Tensor want = host_copy(y);
      cpu->fill(want, 0.75f);
      Tensor dy = up(y);
      cuda_fill(dev(dy), 0.75f, n, nullptr);
      CHECK(bitwise_equal(to_host(dy), want));

      dy = up(y);
      Tensor dx = up(x);
      cuda_copy(dev(dx), dev(dy), n, nullptr);
      CHECK(bitwise_equal(to_host(dy), x));

      want = host_copy(y);
      cpu->axpy(-0.3f, x, want);
      dy = up(y);
      cuda_axpy(-0.3f, dev(dx), dev(dy), n, nullptr);
      CHECK(rel_error(to_host(dy), want) < 1e-5);

      want = host_copy(x);
      cpu->scale(want, 1.7f);
      cuda_scale(dev(dx), 1.7f, n, nullptr);
      CHECK(rel_error(to_host(dx), want) < 1e-5);
    }
  }
}

TEST_CASE("cuda relu forward and backward match the CPU backend, in place too", "[gpu]") {
  auto cpu = make_cpu_backend();
  for (int64_t n : {int64_t{7}, int64_t{4099}, int64_t{3} << 18}) {
    for (bool misaligned : {false, true}) {
      CAPTURE(n, misaligned);
      Shape s{n};
      Tensor x = random_tensor(s, 4), dy = random_tensor(s, 5);
      auto up = [&](const Tensor& h) {
        return misaligned ? to_device_misaligned(h) : to_device(h);
      };
      Tensor y = Tensor::zeros(s), dx = Tensor::zeros(s);
      cpu->relu_forward(x, y);
      cpu->relu_backward(y, dy, dx);

      Tensor gx = up(x), gy = up(Tensor::zeros(s)), gdy = up(dy), gdx = up(Tensor::zeros(s));
      cuda_relu_forward(dev(gx), dev(gy), n, nullptr);
      cuda_relu_backward(dev(gy), dev(gdy), dev(gdx), n, nullptr);
      CHECK(bitwise_equal(to_host(gy), y));
      CHECK(bitwise_equal(to_host(gdx), dx));

      // In place: y over x, then dx over dy.
      cuda_relu_forward(dev(gx), dev(gx), n, nullptr);
      cuda_relu_backward(dev(gx), dev(gdy), dev(gdy), n, nullptr);
      CHECK(bitwise_equal(to_host(gx), y));
      CHECK(bitwise_equal(to_host(gdy), dx));
    }
  }
}

TEST_CASE("cuda dropout draws the CPU backend's mask exactly", "[gpu]") {
  auto cpu = make_cpu_backend();
  const Shape s{2, 9, 10, 11, 3};
  const int64_t n = s.numel();
  Tensor x = random_tensor(s, 6), dy = random_tensor(s, 7);
  for (float p : {0.0f, 0.1f, 0.5f, 0.9f}) {
    for (uint64_t key : {uint64_t{0}, uint64_t{42}, uint64_t{0xDEADBEEF12345678ull}}) {
      CAPTURE(p, key);
      Tensor y = Tensor::zeros(s), dx = Tensor::zeros(s);
      cpu->dropout_forward(x, y, p, key);
      cpu->dropout_backward(dy, dx, p, key);

      Tensor gx = to_device(x), gy = cuda_zeros(s), gdy = to_device(dy), gdx = cuda_zeros(s);
      cuda_dropout_forward(dev(gx), dev(gy), n, p, key, nullptr);
      cuda_dropout_backward(dev(gdy), dev(gdx), n, p, key, nullptr);
      Tensor hy = to_host(gy), hdx = to_host(gdx);
      int64_t mask_mismatch = 0;
      for (int64_t i = 0; i < n; ++i) {
        mask_mismatch += (hy.f32()[i] == 0.0f) != (y.f32()[i] == 0.0f);
        mask_mismatch += (hdx.f32()[i] == 0.0f) != (dx.f32()[i] == 0.0f);
      }
      CHECK(mask_mismatch == 0);
      CHECK(rel_error(hy, y) < 1e-5);
      CHECK(rel_error(hdx, dx) < 1e-5);

      // In place gives the same result.
      cuda_dropout_forward(dev(gx), dev(gx), n, p, key, nullptr);
      CHECK(bitwise_equal(to_host(gx), hy));
      cuda_dropout_backward(dev(gdy), dev(gdy), n, p, key, nullptr);  // the U-Net does this
      CHECK(bitwise_equal(to_host(gdy), hdx));
    }
  }
  Tensor g = to_device(x);
  CHECK_THROWS_AS(cuda_dropout_forward(dev(g), dev(g), n, 1.0f, 1, nullptr), Error);
}

TEST_CASE("cuda channel concat and split match the CPU backend", "[gpu]") {
  auto cpu = make_cpu_backend();
  // Channel counts that are multiples of 4 take the float4 path, the others
  // the scalar one.
  const std::vector<std::pair<int64_t, int64_t>> channels{{8, 16}, {4, 4}, {3, 5}, {1, 8}, {16, 2}};
  for (const auto& [ca, cb] : channels) {
    CAPTURE(ca, cb);
    Shape sa{2, 6, 5, 7, ca}, sb{2, 6, 5, 7, cb}, so{2, 6, 5, 7, ca + cb};
    const int64_t m = 2 * 6 * 5 * 7;
    Tensor a = random_tensor(sa, 8), b = random_tensor(sb, 9), out = Tensor::zeros(so);
    cpu->concat_channels(a, b, out);

    Tensor ga = to_device(a), gb = to_device(b), gout = cuda_zeros(so);
    cuda_concat_channels(dev(ga), dev(gb), dev(gout), m, ca, cb, nullptr);
    CHECK(bitwise_equal(to_host(gout), out));

    Tensor a2 = Tensor::zeros(sa), b2 = Tensor::zeros(sb);
    cpu->split_channels(out, a2, b2);
    Tensor ga2 = cuda_zeros(sa), gb2 = cuda_zeros(sb);
    cuda_split_channels(dev(gout), dev(ga2), dev(gb2), m, ca, cb, nullptr);
    CHECK(bitwise_equal(to_host(ga2), a2));
    CHECK(bitwise_equal(to_host(gb2), b2));
    CHECK(bitwise_equal(a2, a));
  }
}

TEST_CASE("cuda max-pool matches the CPU backend exactly, ties included", "[gpu]") {
  auto cpu = make_cpu_backend();
  const Shape sx{2, 6, 8, 10, 5}, sy{2, 3, 4, 5, 5};
  // Values on a coarse grid, so many windows hold tied maxima and the
  // first-maximum rule is exercised.
  for (bool ties : {false, true}) {
    CAPTURE(ties);
    Tensor x = random_tensor(sx, 10);
    if (ties)
      for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = std::round(x.f32()[i] * 2.0f);
    Tensor dy = random_tensor(sy, 11);
    Tensor y = Tensor::zeros(sy), dx = Tensor::zeros(sx);
    cpu->maxpool_forward(x, y);
    cpu->maxpool_backward(x, y, dy, dx);

    Tensor gx = to_device(x), gy = cuda_zeros(sy), gdy = to_device(dy);
    Tensor gdx = to_device(random_tensor(sx, 12));  // must be overwritten, not accumulated
    cuda_maxpool_forward(dev(gx), dev(gy), 2, 6, 8, 10, 5, nullptr);
    cuda_maxpool_backward(dev(gx), dev(gdy), dev(gdx), 2, 6, 8, 10, 5, nullptr);
    CHECK(bitwise_equal(to_host(gy), y));
    CHECK(bitwise_equal(to_host(gdx), dx));
  }
  Tensor g = cuda_zeros(sx);
  CHECK_THROWS_AS(cuda_maxpool_forward(dev(g), dev(g), 2, 6, 8, 9, 5, nullptr), Error);
}

TEST_CASE("cuda MSE loss matches the CPU backend and is deterministic", "[gpu]") {
  auto cpu = make_cpu_backend();
  DeviceBuffer partials(kMseMaxBlocks * sizeof(double));
  double* scratch = static_cast<double*>(partials.data());
  Tensor loss = cuda_zeros(Shape{1});
  // From one partial block to more elements than the grid has threads.
  for (int64_t n : {int64_t{1}, int64_t{37}, int64_t{2} * 17 * 19 * 23 * 3, int64_t{3} << 20}) {
    CAPTURE(n);
    Shape s{n};
    Tensor pred = random_tensor(s, 13), target = random_tensor(s, 14, -0.5f, 0.5f);
    Tensor dpred = Tensor::zeros(s);
    float want = cpu->mse_loss(pred, target, &dpred);

    Tensor gp = to_device(pred), gt = to_device(target), gd = cuda_zeros(s);
    cuda_mse_loss(dev(gp), dev(gt), dev(gd), n, scratch, dev(loss), nullptr);
    float got = to_host(loss).f32()[0];
    CHECK(std::abs(double{got} - want) <= 1e-6 * std::abs(double{want}));
    CHECK(rel_error(to_host(gd), dpred) < 1e-5);

    // Bit-identical on a second run, and without the gradient.
    cuda_mse_loss(dev(gp), dev(gt), nullptr, n, scratch, dev(loss), nullptr);
    float again = to_host(loss).f32()[0];
    CHECK(std::memcmp(&got, &again, sizeof(float)) == 0);
  }
}

TEST_CASE("cuda Adam matches the CPU backend over several steps", "[gpu]") {
  auto cpu = make_cpu_backend();
  AdamConfig cfg;
  cfg.lr = 3e-3f;
  for (int64_t n : {int64_t{5}, int64_t{100003}}) {
    for (bool misaligned : {false, true}) {
      CAPTURE(n, misaligned);
      Shape s{n};
      auto up = [&](const Tensor& h) {
        return misaligned ? to_device_misaligned(h) : to_device(h);
      };
      Tensor p = random_tensor(s, 15), m = Tensor::zeros(s), v = Tensor::zeros(s);
      Tensor gp = up(p), gm = up(m), gv = up(v);
      for (int64_t step = 1; step <= 5; ++step) {
        Tensor g = random_tensor(s, 100 + static_cast<uint32_t>(step));
        cpu->adam_step(p, g, m, v, cfg, step);
        Tensor gg = up(g);
        cuda_adam_step(dev(gp), dev(gg), dev(gm), dev(gv), n, cfg, step, nullptr);
      }
      CHECK(rel_error(to_host(gp), p) < 1e-6);
      CHECK(rel_error(to_host(gm), m) < 1e-6);
      CHECK(rel_error(to_host(gv), v) < 1e-6);
    }
  }
}
