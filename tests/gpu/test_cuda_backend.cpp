// The CUDA backend (cuda/nn/cuda_backend.h) against the CPU backend: every op
// on the same random inputs, in every precision mode; the whole U-Net's
// loss and parameter gradients; and 50 training steps from the same seed.
// Errors are max |gpu - cpu| / max |cpu| over a tensor; the per-op bounds
// are fp32 1e-5, tf32 1e-3, bf16/fp16 2e-2. Outputs are filled with junk
// before each op, so an op that accumulates instead of overwriting fails.
// Tests tagged [ops] are small and run under compute-sanitizer in
// scripts/gpu-check.sh.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/nn/backend.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/unet.h"
#include "cuda/nn/cuda_backend.h"
#include "tests/compare_util.h"

using namespace dq;
using namespace dq::test;

namespace {

// A device tensor of the given shape full of junk, to be overwritten.
Tensor junk(Backend& g, const Shape& s) {
  Tensor d = g.alloc(s);
  g.fill(d, 7.25f);
  return d;
}

struct Mode {
  const char* precision;
  double tol;
};
const Mode kModes[] = {{"fp32", 1e-5}, {"tf32", 1e-3}, {"bf16", 2e-2}, {"fp16", 2e-2}};

// DEEPQSM_GPU_TEST_AUTOTUNE=0 (gpu-check.sh's memcheck pass) takes cuDNN's
// first proposed engine instead of timing every candidate: the results are
// held to the same tolerances, and memcheck is not slowed by many timing runs.
std::unique_ptr<Backend> gpu_backend(const std::string& precision, bool fuse = true) {
  CudaBackendOptions opt;
  opt.precision = precision;
  opt.fuse = fuse;
  const char* tune = std::getenv("DEEPQSM_GPU_TEST_AUTOTUNE");
  opt.autotune = tune == nullptr || std::string(tune) != "0";
  opt.arena_bytes = size_t{256} << 20;
  return make_cuda_backend(opt);
}

// One layer's shapes: x (n, d, h, w, ci) -> co channels; k = 2 is the
// transposed convolution.
struct Layer {
  int64_t n, d, h, w, ci, co, k;
  Shape x() const { return Shape{n, d, h, w, ci}; }
  Shape y() const {
    int64_t f = k == 2 ? 2 : 1;
    return Shape{n, f * d, f * h, f * w, co};
  }
  Shape weights() const { return k == 2 ? Shape{ci, 2, 2, 2, co} : Shape{co, k, k, k, ci}; }
};

// Runs every pass of one layer on both backends and checks the outputs.
void check_layer(Backend& cpu, Backend& gpu, const Layer& L, double tol, uint32_t seed) {
  const bool t = L.k == 2;
  Tensor x = random_tensor(L.x(), seed), w = random_tensor(L.weights(), seed + 1, -0.3f, 0.3f);
  Tensor b = random_tensor(Shape{L.co}, seed + 2), dy = random_tensor(L.y(), seed + 3);
  Tensor gx = upload_to(gpu, x), gw = upload_to(gpu, w), gb = upload_to(gpu, b), gdy = upload_to(gpu, dy);

  for (int variant = 0; variant < 3; ++variant) {
    const bool with_bias = variant != 2, relu = variant == 0;
    CAPTURE(with_bias, relu);
    Tensor y = Tensor::zeros(L.y());
    Tensor gy = junk(gpu, L.y());
    if (t) {
      cpu.deconv3d_forward(x, w, with_bias ? &b : nullptr, y, relu);
      gpu.deconv3d_forward(gx, gw, with_bias ? &gb : nullptr, gy, relu);
    } else {
      cpu.conv3d_forward(x, w, with_bias ? &b : nullptr, y, relu);
      gpu.conv3d_forward(gx, gw, with_bias ? &gb : nullptr, gy, relu);
    }
    CHECK(rel_error(download_from(gpu, gy), y) < tol);
  }

  Tensor dx = Tensor::zeros(L.x());
  Tensor gdx = junk(gpu, L.x());
  if (t) {
    cpu.deconv3d_backward_data(dy, w, dx);
    gpu.deconv3d_backward_data(gdy, gw, gdx);
  } else {
    cpu.conv3d_backward_data(dy, w, dx);
    gpu.conv3d_backward_data(gdy, gw, gdx);
  }
  CHECK(rel_error(download_from(gpu, gdx), dx) < tol);

  Tensor dw = Tensor::zeros(L.weights()), db = Tensor::zeros(Shape{L.co});
  Tensor gdw = junk(gpu, L.weights()), gdb = junk(gpu, Shape{L.co});
  if (t) {
    cpu.deconv3d_backward_filter(x, dy, dw, &db);
    gpu.deconv3d_backward_filter(gx, gdy, gdw, &gdb);
  } else {
    cpu.conv3d_backward_filter(x, dy, dw, &db);
    gpu.conv3d_backward_filter(gx, gdy, gdw, &gdb);
  }
  CHECK(rel_error(download_from(gpu, gdw), dw) < tol);
  // The bias gradient is summed from fp32 dy in every mode.
  CHECK(rel_error(download_from(gpu, gdb), db) < 1e-5);

  // Without db, dw alone.
  Tensor gdw2 = junk(gpu, L.weights());
  if (t)
    gpu.deconv3d_backward_filter(gx, gdy, gdw2, nullptr);
  else
    gpu.conv3d_backward_filter(gx, gdy, gdw2, nullptr);
  CHECK(rel_error(download_from(gpu, gdw2), dw) < tol);
}

const Layer kLayers[] = {
    {2, 6, 8, 10, 3, 5, 3},                          // odd channel counts, unequal sides
    {1, 8, 8, 8, 16, 16, 3},                         // a U-Net level
    {2, 4, 6, 8, 16, 1, 1},                          // the 1x1x1 head
    {1, 4, 4, 4, 8, 12, 1},  {2, 3, 4, 5, 8, 4, 2},  // transposed, unequal sides
    {1, 4, 4, 4, 16, 8, 2},                          // a U-Net up-convolution
};

UNetConfig small_unet() {
  UNetConfig cfg;
  cfg.depth = 3;
  cfg.base_filters = 4;
  cfg.dropout = 0.1f;
  return cfg;
}

}  // namespace

TEST_CASE("cuda backend convolutions match the CPU backend in every precision", "[gpu][ops][cudnn]") {
  auto cpu = make_cpu_backend();
  for (const Mode& m : kModes) {
    auto gpu = gpu_backend(m.precision);
    CAPTURE(m.precision, gpu->name());
    CHECK(gpu->name().find(m.precision) != std::string::npos);
    uint32_t seed = 100;
    for (const Layer& L : kLayers) {
      CAPTURE(L.n, L.d, L.h, L.w, L.ci, L.co, L.k);
      check_layer(*cpu, *gpu, L, m.tol, seed);
      seed += 10;
    }
    // A second pass reuses the cached plans and must give the same answers.
    for (const Layer& L : kLayers) check_layer(*cpu, *gpu, L, m.tol, seed++);
    std::printf("%s plans:\n%s", m.precision, cuda_conv_report(*gpu).c_str());
  }
}

TEST_CASE("cuda backend: fused and unfused bias + ReLU agree", "[gpu][ops][cudnn]") {
  auto fused = gpu_backend("fp32", true), plain = gpu_backend("fp32", false);
  for (const Layer& L : kLayers) {
    CAPTURE(L.n, L.d, L.h, L.w, L.ci, L.co, L.k);
    Tensor x = random_tensor(L.x(), 7), w = random_tensor(L.weights(), 8, -0.3f, 0.3f);
    Tensor b = random_tensor(Shape{L.co}, 9);
    Tensor y[2];
    Backend* bes[2] = {fused.get(), plain.get()};
    for (int i = 0; i < 2; ++i) {
      Backend& be = *bes[i];
      Tensor gx = upload_to(be, x), gw = upload_to(be, w), gb = upload_to(be, b), gy = junk(be, L.y());
      if (L.k == 2)
        be.deconv3d_forward(gx, gw, &gb, gy, true);
      else
        be.conv3d_forward(gx, gw, &gb, gy, true);
      y[i] = download_from(be, gy);
    }
    CHECK(rel_error(y[0], y[1]) < 1e-5);
  }
  CHECK(cuda_conv_report(*plain).find(", fused") == std::string::npos);
  std::printf("fused fp32 plans:\n%s", cuda_conv_report(*fused).c_str());
}

TEST_CASE("cuda backend pointwise, pooling, loss and Adam ops match the CPU backend",
          "[gpu][ops][cudnn]") {
  auto cpu = make_cpu_backend();
  auto gpu = gpu_backend("fp32");
  const Shape s{2, 4, 6, 8, 3}, half{2, 2, 3, 4, 3};
  Tensor x = random_tensor(s, 1), z = random_tensor(s, 2), dy = random_tensor(half, 3);

  Tensor gx = upload_to(*gpu, x), gz = upload_to(*gpu, z);
  CHECK(rel_error(download_from(*gpu, gx), x) == 0.0);

  Tensor want = Tensor::zeros(s);
  cpu->copy(x, want);
  cpu->axpy(0.5f, z, want);
  cpu->scale(want, -1.5f);
  Tensor g = junk(*gpu, s);
  gpu->copy(gx, g);
  gpu->axpy(0.5f, gz, g);
  gpu->scale(g, -1.5f);
  CHECK(rel_error(download_from(*gpu, g), want) < 1e-6);

  Tensor r = Tensor::zeros(s), dr = Tensor::zeros(s);
  cpu->relu_forward(x, r);
  cpu->relu_backward(r, z, dr);
  Tensor gr = junk(*gpu, s), gdr = junk(*gpu, s);
  gpu->relu_forward(gx, gr);
  gpu->relu_backward(gr, gz, gdr);
  CHECK(rel_error(download_from(*gpu, gr), r) == 0.0);
  CHECK(rel_error(download_from(*gpu, gdr), dr) == 0.0);

  Tensor d = Tensor::zeros(s), dd = Tensor::zeros(s);
  cpu->dropout_forward(x, d, 0.3f, 1234);
  cpu->dropout_backward(z, dd, 0.3f, 1234);
  Tensor gd = junk(*gpu, s), gdd = junk(*gpu, s);
  gpu->dropout_forward(gx, gd, 0.3f, 1234);
  gpu->dropout_backward(gz, gdd, 0.3f, 1234);
  CHECK(rel_error(download_from(*gpu, gd), d) < 1e-6);
  CHECK(rel_error(download_from(*gpu, gdd), dd) < 1e-6);

  Tensor p = Tensor::zeros(half), dp = Tensor::zeros(s);
  cpu->maxpool_forward(x, p);
  cpu->maxpool_backward(x, p, dy, dp);
  Tensor gp = junk(*gpu, half), gdp = junk(*gpu, s), gdy = upload_to(*gpu, dy);
  gpu->maxpool_forward(gx, gp);
  gpu->maxpool_backward(gx, gp, gdy, gdp);
  CHECK(rel_error(download_from(*gpu, gp), p) == 0.0);
  CHECK(rel_error(download_from(*gpu, gdp), dp) == 0.0);

  const Shape sc{2, 4, 6, 8, 6};
  Tensor c = Tensor::zeros(sc), a2 = Tensor::zeros(s), b2 = Tensor::zeros(s);
  cpu->concat_channels(x, z, c);
  Tensor gc = junk(*gpu, sc), ga2 = junk(*gpu, s), gb2 = junk(*gpu, s);
  gpu->concat_channels(gx, gz, gc);
  gpu->split_channels(gc, ga2, gb2);
  CHECK(rel_error(download_from(*gpu, gc), c) == 0.0);
  CHECK(rel_error(download_from(*gpu, ga2), x) == 0.0);
  CHECK(rel_error(download_from(*gpu, gb2), z) == 0.0);

  Tensor dpred = Tensor::zeros(s);
  float loss = cpu->mse_loss(x, z, &dpred);
  Tensor gdpred = junk(*gpu, s);
  float gloss = gpu->mse_loss(gx, gz, &gdpred);
  CHECK(std::abs(double{gloss} - loss) <= 1e-6 * std::abs(double{loss}));
  CHECK(rel_error(download_from(*gpu, gdpred), dpred) < 1e-6);
  CHECK(gpu->mse_loss(gx, gz, nullptr) == gloss);

  Tensor params = random_tensor(Shape{1001}, 5), m = Tensor::zeros(Shape{1001}),
         v = Tensor::zeros(Shape{1001});
  Tensor gparams = upload_to(*gpu, params), gm = gpu->alloc(Shape{1001}), gv = gpu->alloc(Shape{1001});
  AdamConfig cfg;
  for (int64_t step = 1; step <= 3; ++step) {
    Tensor grad = random_tensor(Shape{1001}, 50 + static_cast<uint32_t>(step));
    cpu->adam_step(params, grad, m, v, cfg, step);
    Tensor ggrad = upload_to(*gpu, grad);
    gpu->adam_step(gparams, ggrad, gm, gv, cfg, step);
  }
  CHECK(rel_error(download_from(*gpu, gparams), params) < 1e-6);

  // alloc gives zeros; wrong devices and dtypes are refused.
  Tensor zeros = download_from(*gpu, gpu->alloc(s));
  CHECK(std::all_of(zeros.f32(), zeros.f32() + zeros.numel(), [](float f) { return f == 0.0f; }));
  CHECK_THROWS_AS(gpu->relu_forward(x, gr), Error);
  Tensor g16 = gpu->alloc(s, DType::f16);
  CHECK_THROWS_AS(gpu->relu_forward(g16, gr), Error);
  CHECK_THROWS_AS(gpu_backend("fp8"), Error);
}

TEST_CASE("cuda backend: the U-Net's loss and parameter gradients match the CPU backend", "[gpu][cudnn]") {
  auto cpu = make_cpu_backend();
  const Shape in{2, 16, 16, 16, 1};
  Tensor x = random_tensor(in, 11), target = random_tensor(in, 12, -0.2f, 0.2f);
  struct UMode {
    const char* precision;
    double loss_tol, grad_tol;
  };
  // Gradients pass through ~20 layers, ReLU kinks and pooling ties, so the
  // bound is looser than one op's.
  const UMode modes[] = {
      {"fp32", 1e-5, 1e-4}, {"tf32", 1e-3, 1e-2}, {"bf16", 2e-2, 1e-1}, {"fp16", 2e-2, 1e-1}};

  UNet net_cpu(small_unet());
  Tensor params = Tensor::zeros(Shape{net_cpu.layout().total()});
  net_cpu.init_he(params, 42);
  Tensor y = Tensor::zeros(in), dy = Tensor::zeros(in), grads = Tensor::zeros(params.shape());
  net_cpu.forward(*cpu, params, x, y, true, 99);
  float loss = cpu->mse_loss(y, target, &dy);
  net_cpu.backward(*cpu, params, dy, grads);

  for (const UMode& m : modes) {
    CAPTURE(m.precision);
    auto gpu = gpu_backend(m.precision);
    UNet net(small_unet());
    Tensor gparams = upload_to(*gpu, params), gx = upload_to(*gpu, x), gt = upload_to(*gpu, target);
    Tensor gy = gpu->alloc(in), gdy = gpu->alloc(in), ggrads = junk(*gpu, params.shape());
    net.forward(*gpu, gparams, gx, gy, true, 99);
    float gloss = gpu->mse_loss(gy, gt, &gdy);
    net.backward(*gpu, gparams, gdy, ggrads);
    CHECK(std::abs(double{gloss} - loss) <= m.loss_tol * std::abs(double{loss}));
    Tensor hg = download_from(*gpu, ggrads);
    for (int i = 0; i < static_cast<int>(net.layout().params().size()); ++i) {
      CAPTURE(net.layout()[i].name);
      CHECK(rel_error(net.layout().view(hg, i), net.layout().view(grads, i)) < m.grad_tol);
    }
  }
}

TEST_CASE("cuda backend: 50 fp32 training steps track the CPU backend", "[gpu][cudnn]") {
  auto cpu = make_cpu_backend();
  auto gpu = gpu_backend("fp32");
  const Shape in{2, 16, 16, 16, 1};
  UNetConfig cfg = small_unet();
  cfg.dropout = 0.05f;
  UNet net_cpu(cfg), net_gpu(cfg);
  Tensor params = Tensor::zeros(Shape{net_cpu.layout().total()});
  net_cpu.init_he(params, 7);
  const Shape ps = params.shape();
  Tensor m = Tensor::zeros(ps), v = Tensor::zeros(ps), grads = Tensor::zeros(ps);
  Tensor y = Tensor::zeros(in), dy = Tensor::zeros(in);
  Tensor gparams = upload_to(*gpu, params), gm = gpu->alloc(ps), gv = gpu->alloc(ps),
         ggrads = gpu->alloc(ps), gy = gpu->alloc(in), gdy = gpu->alloc(in);
  Tensor gx = gpu->alloc(in), gt = gpu->alloc(in);
  AdamConfig adam;
  adam.lr = 1e-3f;

  std::vector<float> cpu_loss, gpu_loss;
  DevicePoolStats after_first{};
  for (int64_t step = 1; step <= 50; ++step) {
    // A fresh batch each step; the target is a smoothed copy of the input,
    // so there is something to learn.
    Tensor x = random_tensor(in, 1000 + static_cast<uint32_t>(step));
    Tensor t = Tensor::zeros(in);
    for (int64_t i = 0; i < x.numel(); ++i)
      t.f32()[i] = 0.5f * x.f32()[i] + 0.25f * x.f32()[(i + 1) % x.numel()];
    const uint64_t key = 500 + static_cast<uint64_t>(step);

    net_cpu.forward(*cpu, params, x, y, true, key);
    cpu_loss.push_back(cpu->mse_loss(y, t, &dy));
    net_cpu.backward(*cpu, params, dy, grads);
    cpu->adam_step(params, grads, m, v, adam, step);

    gpu->upload(x, gx);
    gpu->upload(t, gt);
    net_gpu.forward(*gpu, gparams, gx, gy, true, key);
    gpu_loss.push_back(gpu->mse_loss(gy, gt, &gdy));
    net_gpu.backward(*gpu, gparams, gdy, ggrads);
    gpu->adam_step(gparams, ggrads, gm, gv, adam, step);
    if (step == 1) after_first = cuda_pool_stats(*gpu);
  }
  for (size_t i = 0; i < cpu_loss.size(); ++i) {
    CAPTURE(i, cpu_loss[i], gpu_loss[i]);
    CHECK(std::abs(double{gpu_loss[i]} - cpu_loss[i]) <= 1e-3 * std::abs(double{cpu_loss[i]}));
  }
  CHECK(cpu_loss.back() < cpu_loss.front());
  CHECK(gpu_loss.back() < gpu_loss.front());
  // Adam's normalised steps let parameters with near-zero gradients drift
  // by up to lr per step, so the bound is on the scale of 50 * lr.
  CHECK(rel_error(download_from(*gpu, gparams), params) < 2e-2);
  // The steady state allocates nothing new from the driver.
  DevicePoolStats end = cuda_pool_stats(*gpu);
  CHECK(end.growths == after_first.growths);
  CHECK(end.capacity == after_first.capacity);
  std::printf("50 steps: loss cpu %.6f -> %.6f, gpu %.6f -> %.6f; pool %zu MiB, peak %zu MiB\n",
              cpu_loss.front(), cpu_loss.back(), gpu_loss.front(), gpu_loss.back(),
              end.capacity >> 20, end.peak >> 20);
}
