// Pointwise kernels: fill, copy, axpy, scale, ReLU, dropout and the channel
// concat/split copies. All are memory-bound; the simple ones take a float4
// path when every pointer is 16-byte aligned (true for arena blocks and
// parameter views) with a scalar loop for the last n % 4 elements.
// Pointers that may alias (the in-place cases) are not __restrict__.
#include <cstdint>

#include "core/nn/philox.h"
#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/nn/kernels.h"

namespace dq {

namespace {

using detail::grid_for;
using detail::kThreads;

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Each op is a functor returning one output element from its input
// elements; the map kernels apply it to n floats, through float4 loads and
// stores when `vec` says every pointer is 16-byte aligned.
struct FillOp {
  float value;
  __device__ float operator()() const { return value; }
};
struct ScaleOp {
  float a;
  __device__ float operator()(float x) const { return x * a; }
};
struct ReluOp {
  __device__ float operator()(float x) const { return x > 0.0f ? x : 0.0f; }
};
struct AxpyOp {
  float a;
  // Not contracted to an FMA, so it rounds like the CPU's y + a * x (the CG
  // and TV iterations in cuda/qsm/inversion.cu use it and are compared with the CPU).
  __device__ float operator()(float x, float y) const { return __fadd_rn(y, __fmul_rn(a, x)); }
};
struct ReluBackwardOp {
  __device__ float operator()(float y, float dy) const { return y > 0.0f ? dy : 0.0f; }
};

// out[i] = op()
template <typename Op>
__global__ void map0_kernel(Op op, float* out, int64_t n, bool vec) {
  int64_t start = 0;
  if (vec) {
    int64_t n4 = n / 4;
    float4* o4 = reinterpret_cast<float4*>(out);
    for (int64_t i = thread_index(); i < n4; i += grid_stride())
      o4[i] = make_float4(op(), op(), op(), op());
    start = n4 * 4;
  }
  for (int64_t i = start + thread_index(); i < n; i += grid_stride()) out[i] = op();
}

// out[i] = op(x[i]); out may be x.
template <typename Op>
__global__ void map1_kernel(Op op, const float* x, float* out, int64_t n, bool vec) {
  int64_t start = 0;
  if (vec) {
    int64_t n4 = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* o4 = reinterpret_cast<float4*>(out);
    for (int64_t i = thread_index(); i < n4; i += grid_stride()) {
      float4 a = x4[i];
      o4[i] = make_float4(op(a.x), op(a.y), op(a.z), op(a.w));
    }
    start = n4 * 4;
  }
  for (int64_t i = start + thread_index(); i < n; i += grid_stride()) out[i] = op(x[i]);
}

// out[i] = op(x[i], y[i]); out may be x or y.
template <typename Op>
__global__ void map2_kernel(Op op, const float* x, const float* y, float* out, int64_t n,
                            bool vec) {
  int64_t start = 0;
  if (vec) {
    int64_t n4 = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* y4 = reinterpret_cast<const float4*>(y);
    float4* o4 = reinterpret_cast<float4*>(out);
    for (int64_t i = thread_index(); i < n4; i += grid_stride()) {
      float4 a = x4[i], b = y4[i];
      o4[i] = make_float4(op(a.x, b.x), op(a.y, b.y), op(a.z, b.z), op(a.w, b.w));
    }
    start = n4 * 4;
  }
  for (int64_t i = start + thread_index(); i < n; i += grid_stride()) out[i] = op(x[i], y[i]);
}

// The float4 path covers n / 4 vectors, so the grid is sized for those.
unsigned grid_for_vec(int64_t n, bool vec) {
  return grid_for(vec ? (n + 3) / 4 : n);
}

// Dropout draws one Philox block per element index, exactly as the CPU
// backend does, so the mask is bit-identical; the hash dominates the cost,
// so there is no vector path.
__global__ void dropout_kernel(const float* x, float* y, int64_t n, float p, float scale,
                               uint64_t key, uint64_t offset) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) {
    bool keep = philox_uniform(key, offset + static_cast<uint64_t>(i)) >= p;
    y[i] = keep ? x[i] * scale : 0.0f;
  }
}

// Concat and split in units of T: float4 when both channel counts are
// multiples of 4 and the pointers are aligned, else float. One thread per
// output unit; the integer division is cheap next to the memory traffic.
template <typename T>
__global__ void concat_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                              int64_t total, int64_t ca, int64_t cb) {
  const int64_t c = ca + cb;
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    int64_t row = i / c, k = i - row * c;
    out[i] = k < ca ? a[row * ca + k] : b[row * cb + (k - ca)];
  }
}

template <typename T>
__global__ void split_kernel(const T* __restrict__ out, T* __restrict__ a, T* __restrict__ b,
                             int64_t total, int64_t ca, int64_t cb) {
  const int64_t c = ca + cb;
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    int64_t row = i / c, k = i - row * c;
    if (k < ca)
      a[row * ca + k] = out[i];
    else
      b[row * cb + (k - ca)] = out[i];
  }
}

}  // namespace

void cuda_fill(float* x, float value, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  bool vec = aligned16(x);
  DQ_LAUNCH(map0_kernel, grid_for_vec(n, vec), kThreads, 0, s)(FillOp{value}, x, n, vec);
  DQ_CUDA(cudaGetLastError());
}

void cuda_copy(const float* x, float* y, int64_t n, cudaStream_t s) {
  if (n <= 0 || x == y) return;
  // The copy engine path is as fast as any kernel and needs no launch config.
  DQ_CUDA(
      cudaMemcpyAsync(y, x, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToDevice, s));
}

void cuda_axpy(float a, const float* x, float* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  bool vec = aligned16(x) && aligned16(y);
  DQ_LAUNCH(map2_kernel, grid_for_vec(n, vec), kThreads, 0, s)(AxpyOp{a}, x, y, y, n, vec);
  DQ_CUDA(cudaGetLastError());
}

void cuda_scale(float* x, float a, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  bool vec = aligned16(x);
  DQ_LAUNCH(map1_kernel, grid_for_vec(n, vec), kThreads, 0, s)(ScaleOp{a}, x, x, n, vec);
  DQ_CUDA(cudaGetLastError());
}

void cuda_relu_forward(const float* x, float* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  bool vec = aligned16(x) && aligned16(y);
  DQ_LAUNCH(map1_kernel, grid_for_vec(n, vec), kThreads, 0, s)(ReluOp{}, x, y, n, vec);
  DQ_CUDA(cudaGetLastError());
}

void cuda_relu_backward(const float* y, const float* dy, float* dx, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  bool vec = aligned16(y) && aligned16(dy) && aligned16(dx);
  DQ_LAUNCH(map2_kernel, grid_for_vec(n, vec), kThreads, 0, s)(ReluBackwardOp{}, y, dy, dx, n, vec);
  DQ_CUDA(cudaGetLastError());
}

void cuda_dropout_forward(const float* x, float* y, int64_t n, float p, uint64_t key,
                          cudaStream_t s, uint64_t offset) {
  DQ_CHECK(p >= 0.0f && p < 1.0f, "dropout probability must be in [0, 1), got ", p);
  if (n <= 0) return;
  if (p == 0.0f) return cuda_copy(x, y, n, s);  // every u >= 0: the identity, skip the hashing
  DQ_LAUNCH(dropout_kernel, grid_for(n), kThreads, 0, s)
  (x, y, n, p, 1.0f / (1.0f - p), key, offset);
  DQ_CUDA(cudaGetLastError());
}

void cuda_dropout_backward(const float* dy, float* dx, int64_t n, float p, uint64_t key,
                           cudaStream_t s, uint64_t offset) {
  // The backward pass is the same masked scaling applied to the gradient.
  cuda_dropout_forward(dy, dx, n, p, key, s, offset);
}

void cuda_concat_channels(const float* a, const float* b, float* out, int64_t m, int64_t ca,
                          int64_t cb, cudaStream_t s) {
  DQ_CHECK(m >= 0 && ca >= 0 && cb >= 0, "concat of negative size");
  int64_t total = m * (ca + cb);
  if (total == 0) return;
  if (ca % 4 == 0 && cb % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(out)) {
    DQ_LAUNCH(concat_kernel, grid_for(total / 4), kThreads, 0, s)
    (reinterpret_cast<const float4*>(a), reinterpret_cast<const float4*>(b),
     reinterpret_cast<float4*>(out), total / 4, ca / 4, cb / 4);
  } else {
    DQ_LAUNCH(concat_kernel, grid_for(total), kThreads, 0, s)(a, b, out, total, ca, cb);
  }
  DQ_CUDA(cudaGetLastError());
}

void cuda_split_channels(const float* out, float* a, float* b, int64_t m, int64_t ca, int64_t cb,
                         cudaStream_t s) {
  DQ_CHECK(m >= 0 && ca >= 0 && cb >= 0, "split of negative size");
  int64_t total = m * (ca + cb);
  if (total == 0) return;
  if (ca % 4 == 0 && cb % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(out)) {
    DQ_LAUNCH(split_kernel, grid_for(total / 4), kThreads, 0, s)
    (reinterpret_cast<const float4*>(out), reinterpret_cast<float4*>(a),
     reinterpret_cast<float4*>(b), total / 4, ca / 4, cb / 4);
  } else {
    DQ_LAUNCH(split_kernel, grid_for(total), kThreads, 0, s)(out, a, b, total, ca, cb);
  }
  DQ_CUDA(cudaGetLastError());
}

}  // namespace dq
