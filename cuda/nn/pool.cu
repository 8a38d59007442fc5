// Max-pool 2x2x2 with stride 2 on NDHWC tensors. One thread per output
// element, channel fastest, so neighbouring threads read neighbouring
// channels of the same voxel (coalesced). Windows do not overlap, so the
// backward pass writes every dx element exactly once, with no atomics and
// no separate zero fill.
#include <cstdint>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/nn/kernels.h"

namespace dq {

namespace {

using detail::grid_for;
using detail::kThreads;

// Output element i as the offset of its window's first input element.
struct Window {
  int64_t base;
  int64_t sd, sh, sw;  // input strides of d, h, w

  __device__ Window(int64_t i, int64_t d, int64_t h, int64_t w, int64_t c) {
    const int64_t od = d / 2, oh = h / 2, ow = w / 2;
    int64_t k = i % c, t = i / c;
    int64_t x = t % ow;
    t /= ow;
    int64_t y = t % oh;
    t /= oh;
    int64_t z = t % od, n = t / od;
    sw = c;
    sh = w * c;
    sd = h * w * c;
    base = n * d * sd + 2 * z * sd + 2 * y * sh + 2 * x * sw + k;
  }
  // Offset of window element j = 4a + 2b + c, i.e. in window order (a, b, c).
  __device__ int64_t at(int j) const {
    return base + (j >> 2) * sd + ((j >> 1) & 1) * sh + (j & 1) * sw;
  }
};

__global__ void maxpool_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                       int64_t total, int64_t d, int64_t h, int64_t w, int64_t c) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Window win(i, d, h, w, c);
    float best = x[win.at(0)];
#pragma unroll
    for (int j = 1; j < 8; ++j) {
      float v = x[win.at(j)];
      if (v > best) best = v;  // strict: ties keep the earlier element
    }
    y[i] = best;
  }
}

// The argmax is recomputed from x with the forward's strict comparison, as
// the CPU backend does, so ties go to the first maximum in window order.
__global__ void maxpool_backward_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                        float* __restrict__ dx, int64_t total, int64_t d, int64_t h,
                                        int64_t w, int64_t c) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Window win(i, d, h, w, c);
    int arg = 0;
    float best = x[win.at(0)];
#pragma unroll
    for (int j = 1; j < 8; ++j) {
      float v = x[win.at(j)];
      if (v > best) {
        best = v;
        arg = j;
      }
    }
    const float g = dy[i];
#pragma unroll
    for (int j = 0; j < 8; ++j) dx[win.at(j)] = j == arg ? g : 0.0f;
  }
}

void check_dims(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c) {
  DQ_CHECK(n >= 0 && d >= 0 && h >= 0 && w >= 0 && c >= 0, "max-pool of negative size");
  DQ_CHECK(d % 2 == 0 && h % 2 == 0 && w % 2 == 0, "max-pool needs even sides, got ", d, "x", h,
           "x", w);
}

}  // namespace

void cuda_maxpool_forward(const float* x, float* y, int64_t n, int64_t d, int64_t h, int64_t w,
                          int64_t c, cudaStream_t s) {
  check_dims(n, d, h, w, c);
  int64_t total = n * (d / 2) * (h / 2) * (w / 2) * c;
  if (total == 0) return;
  DQ_LAUNCH(maxpool_forward_kernel, grid_for(total), kThreads, 0, s)(x, y, total, d, h, w, c);
  DQ_CUDA(cudaGetLastError());
}

void cuda_maxpool_backward(const float* x, const float* dy, float* dx, int64_t n, int64_t d,
                           int64_t h, int64_t w, int64_t c, cudaStream_t s) {
  check_dims(n, d, h, w, c);
  int64_t total = n * (d / 2) * (h / 2) * (w / 2) * c;
  if (total == 0) return;
  DQ_LAUNCH(maxpool_backward_kernel, grid_for(total), kThreads, 0, s)(x, dy, dx, total, d, h, w, c);
  DQ_CUDA(cudaGetLastError());
}

}  // namespace dq
