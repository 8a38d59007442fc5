// The emulator's own rules (DEEPQSM_GPU=emu only): barriers that really
// wait and that report misuse, launch limits as a GPU enforces them, the
// runtime's refusals (wrong memcpy direction, use after free, host memory as
// a kernel argument, ranges past an allocation), the poison in new memory,
// the block order modes and cuFFT's layout and scaling on FFTW.
#include <cufft.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/memory.h"

using namespace dq;

namespace {

constexpr int kBlock = 64;

// Reverses each block's slice through shared memory: wrong without a barrier.
__global__ void reverse_k(const float* in, float* out) {
  __shared__ float s[kBlock];
  const unsigned base = blockIdx.x * blockDim.x;
  s[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}
// Odd and even threads wait at different barriers.
__global__ void split_barrier_k(float* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}
// Thread 0 leaves while the others wait.
__global__ void early_exit_k(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}
// Appends its block index to a log (one thread per block; blocks run one at a
// time in the emulator).
__global__ void order_k(int* log, int* count) {
  log[(*count)++] = static_cast<int>(blockIdx.x);
}
__global__ void touch_k(float* p) {
  p[threadIdx.x] = 2.0f;
}

std::string error_after_launch() {
  const cudaError_t e = cudaGetLastError();
  return std::string(cudaGetErrorName(e)) + ": " + dq_emu::last_detail();
}

}  // namespace

TEST_CASE("emu: __syncthreads is a real barrier across a block", "[emu]") {
  const int n = kBlock * 5;
  std::vector<float> h(n);
  std::iota(h.begin(), h.end(), 0.0f);
  DeviceBuffer in(n * 4), out(n * 4);
  DQ_CUDA(cudaMemcpy(in.data(), h.data(), n * 4, cudaMemcpyHostToDevice));
  DQ_LAUNCH(reverse_k, 5, kBlock, 0, nullptr)
  (static_cast<const float*>(in.data()), static_cast<float*>(out.data()));
  DQ_CUDA(cudaGetLastError());
  std::vector<float> r(n);
  DQ_CUDA(cudaMemcpy(r.data(), out.data(), n * 4, cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) REQUIRE(r[i] == h[(i / kBlock) * kBlock + kBlock - 1 - i % kBlock]);
}

TEST_CASE("emu: threads at different barriers, or leaving one, are a launch failure", "[emu]") {
  DeviceBuffer out(kBlock * 4);
  DQ_LAUNCH(split_barrier_k, 1, kBlock, 0, nullptr)(static_cast<float*>(out.data()));
  CHECK_THAT(error_after_launch(),
             Catch::Contains("cudaErrorLaunchFailure") && Catch::Contains("different barriers"));
  DQ_LAUNCH(early_exit_k, 1, kBlock, 0, nullptr)(static_cast<float*>(out.data()));
  CHECK_THAT(error_after_launch(),
             Catch::Contains("cudaErrorLaunchFailure") && Catch::Contains("exited while"));
  // The emulator is usable afterwards.
  DQ_LAUNCH(touch_k, 1, kBlock, 0, nullptr)(static_cast<float*>(out.data()));
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("emu: launch limits give a GPU's errors", "[emu]") {
  DeviceBuffer out(2048 * 4);
  float* p = static_cast<float*>(out.data());
  DQ_LAUNCH(touch_k, 1, 1025, 0, nullptr)(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  DQ_LAUNCH(touch_k, 1, dim3(8, 8, 65), 0, nullptr)(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  DQ_LAUNCH(touch_k, 0, 32, 0, nullptr)(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  DQ_LAUNCH(touch_k, 1, 32, 228 * 1024, nullptr)(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  DQ_LAUNCH(touch_k, 1, 1024, 227 * 1024, nullptr)(p);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(dq_emu::launches("touch_k") >= 1);
}

TEST_CASE("emu: memcpy refuses a direction that does not match the pointers", "[emu]") {
  DeviceBuffer d(64);
  std::vector<char> h(64);
  CHECK(cudaMemcpy(h.data(), d.data(), 64, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d.data(), h.data(), 64, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(h.data(), h.data() + 32, 32, cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d.data(), h.data(), 65, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK_THAT(dq_emu::last_detail(), Catch::Contains("past the end"));
  CHECK(cudaMemset(h.data(), 0, 64) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d.data(), h.data(), 64, cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpy(h.data(), d.data(), 64, cudaMemcpyDefault) == cudaSuccess);
  cudaGetLastError();
}

TEST_CASE("emu: freed device memory and host memory are refused where device memory is due",
          "[emu]") {
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, 256) == cudaSuccess);
  REQUIRE(cudaFree(p) == cudaSuccess);
  std::vector<float> h(64);
  CHECK(cudaMemcpy(h.data(), p, 64, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK_THAT(dq_emu::last_detail(), Catch::Contains("use after free"));
  CHECK(cudaFree(p) == cudaErrorInvalidValue);  // double free
  DQ_LAUNCH(touch_k, 1, 32, 0, nullptr)(static_cast<float*>(p));
  CHECK_THAT(error_after_launch(),
             Catch::Contains("cudaErrorIllegalAddress") && Catch::Contains("use after free"));
  DQ_LAUNCH(touch_k, 1, 32, 0, nullptr)(h.data());
  CHECK_THAT(error_after_launch(),
             Catch::Contains("cudaErrorIllegalAddress") && Catch::Contains("host memory"));
  CHECK(h[0] == 0.0f);  // the kernel did not run
}

TEST_CASE("emu: new device memory reads as NaN", "[emu]") {
  DeviceBuffer d(1000 * sizeof(float));
  std::vector<float> h(1000, 0.0f);
  DQ_CUDA(cudaMemcpy(h.data(), d.data(), h.size() * 4, cudaMemcpyDeviceToHost));
  for (float v : h) REQUIRE(std::isnan(v));
  DeviceBuffer e(100 * sizeof(double));
  std::vector<double> g(100, 0.0);
  DQ_CUDA(cudaMemcpy(g.data(), e.data(), g.size() * 8, cudaMemcpyDeviceToHost));
  for (double v : g) REQUIRE(std::isnan(v));
}

TEST_CASE("emu: blocks run in the order DEEPQSM_EMU_BLOCK_ORDER asks", "[emu]") {
  const int blocks = 200;
  DeviceBuffer log(blocks * 4), count(4);
  DQ_CUDA(cudaMemset(count.data(), 0, 4));
  DQ_LAUNCH(order_k, blocks, 1, 0, nullptr)
  (static_cast<int*>(log.data()), static_cast<int*>(count.data()));
  DQ_CUDA(cudaGetLastError());
  std::vector<int> order(blocks);
  DQ_CUDA(cudaMemcpy(order.data(), log.data(), blocks * 4, cudaMemcpyDeviceToHost));
  std::vector<int> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int> ids(blocks);
  std::iota(ids.begin(), ids.end(), 0);
  REQUIRE(sorted == ids);  // every block once
  const char* env = std::getenv("DEEPQSM_EMU_BLOCK_ORDER");
  const std::string mode = env ? env : "normal";
  if (mode == "normal" || mode.empty()) CHECK(order == ids);
  if (mode == "reverse") CHECK(order == std::vector<int>(ids.rbegin(), ids.rend()));
  if (mode == "shuffle") CHECK(order != ids);
}

TEST_CASE("emu: cuFFT's half spectrum, row-major layout and no normalisation", "[emu]") {
  const int nx = 4, ny = 6, nz = 10, n = nx * ny * nz, nh = nx * ny * (nz / 2 + 1);
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = std::sin(0.37f * i) + (i % 7 == 0 ? 1.0f : 0.0f);
  DeviceBuffer dr(n * 4), dc(nh * 8), back(n * 4);
  DQ_CUDA(cudaMemcpy(dr.data(), x.data(), n * 4, cudaMemcpyHostToDevice));
  cufftHandle r2c, c2r;
  REQUIRE(cufftPlan3d(&r2c, nx, ny, nz, CUFFT_R2C) == CUFFT_SUCCESS);
  REQUIRE(cufftPlan3d(&c2r, nx, ny, nz, CUFFT_C2R) == CUFFT_SUCCESS);
  REQUIRE(cufftExecR2C(r2c, static_cast<float*>(dr.data()),
                       static_cast<cufftComplex*>(dc.data())) == CUFFT_SUCCESS);
  std::vector<cufftComplex> spec(nh);
  DQ_CUDA(cudaMemcpy(spec.data(), dc.data(), nh * 8, cudaMemcpyDeviceToHost));
  // One coefficient by the definition: X[a][b][c], the last index fastest.
  const int a = 1, b = 2, c = 3;
  double re = 0, im = 0;
  for (int i = 0; i < nx; ++i)
    for (int j = 0; j < ny; ++j)
      for (int k = 0; k < nz; ++k) {
        const double ph =
            -2 * M_PI * (double(a * i) / nx + double(b * j) / ny + double(c * k) / nz);
        re += x[(i * ny + j) * nz + k] * std::cos(ph);
        im += x[(i * ny + j) * nz + k] * std::sin(ph);
      }
  const cufftComplex got = spec[(a * ny + b) * (nz / 2 + 1) + c];
  CHECK(got.x == Approx(re).margin(1e-4));
  CHECK(got.y == Approx(im).margin(1e-4));
  REQUIRE(cufftExecC2R(c2r, static_cast<cufftComplex*>(dc.data()),
                       static_cast<float*>(back.data())) == CUFFT_SUCCESS);
  std::vector<float> y(n);
  DQ_CUDA(cudaMemcpy(y.data(), back.data(), n * 4, cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) REQUIRE(y[i] == Approx(n * x[i]).margin(1e-3));  // unnormalised
  std::vector<float> host(n);
  CHECK(cufftExecR2C(r2c, host.data(), static_cast<cufftComplex*>(dc.data())) ==
        CUFFT_INVALID_VALUE);  // host memory
  CHECK(cufftDestroy(r2c) == CUFFT_SUCCESS);
  CHECK(cufftDestroy(c2r) == CUFFT_SUCCESS);
}
