// Adam over the flat fp32 parameter buffer in one launch (all parameters
// share one layout, see core/nn/params.h). The bias corrections 1 - beta^t are
// computed on the host in double: in fp32, beta2^t for beta2 = 0.99 loses
// most of its digits once t is in the thousands, and computing them per
// thread would repeat the same pow a million times.
#include <cmath>
#include <cstdint>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/nn/kernels.h"

namespace dq {

namespace {

using detail::grid_for;
using detail::kThreads;

struct AdamArgs {
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
  float eps;
};

// PyTorch's update and order of operations, as in the CPU backend:
// p -= step_size * (m / (sqrt(v) / sqrt(bc2) + eps)).
__device__ __forceinline__ void adam_one(const AdamArgs& a, float& p, float g, float& m, float& v) {
  m = a.beta1 * m + a.one_minus_beta1 * g;
  v = a.beta2 * v + a.one_minus_beta2 * g * g;
  p -= a.step_size * (m / (sqrtf(v) / a.bc2_sqrt + a.eps));
}

// float4 over the first n / 4 vectors when every buffer is 16-byte aligned
// (parameter views are 64-byte aligned), scalars for the rest.
__global__ void adam_kernel(AdamArgs a, float* __restrict__ p, const float* __restrict__ g,
                            float* __restrict__ m, float* __restrict__ v, int64_t n, bool vec) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t start = 0;
  if (vec) {
    int64_t n4 = n / 4;
    float4* p4 = reinterpret_cast<float4*>(p);
    const float4* g4 = reinterpret_cast<const float4*>(g);
    float4* m4 = reinterpret_cast<float4*>(m);
    float4* v4 = reinterpret_cast<float4*>(v);
    for (int64_t i = first; i < n4; i += stride) {
      float4 pp = p4[i], gg = g4[i], mm = m4[i], vv = v4[i];
      adam_one(a, pp.x, gg.x, mm.x, vv.x);
      adam_one(a, pp.y, gg.y, mm.y, vv.y);
      adam_one(a, pp.z, gg.z, mm.z, vv.z);
      adam_one(a, pp.w, gg.w, mm.w, vv.w);
      p4[i] = pp;
      m4[i] = mm;
      v4[i] = vv;
    }
    start = n4 * 4;
  }
  for (int64_t i = start + first; i < n; i += stride) adam_one(a, p[i], g[i], m[i], v[i]);
}

bool aligned16(const void* q) {
  return reinterpret_cast<uintptr_t>(q) % 16 == 0;
}

}  // namespace

void cuda_adam_step(float* params, const float* grads, float* m, float* v, int64_t n,
                    const AdamConfig& cfg, int64_t step, cudaStream_t s) {
  DQ_CHECK(step >= 1, "Adam step ", step, " (steps count from 1)");
  if (n <= 0) return;
  const double t = static_cast<double>(step);
  const double bc1 = 1.0 - std::pow(double{cfg.beta1}, t);
  const double bc2 = 1.0 - std::pow(double{cfg.beta2}, t);
  AdamArgs a;
  a.beta1 = cfg.beta1;
  a.one_minus_beta1 = 1.0f - cfg.beta1;
  a.beta2 = cfg.beta2;
  a.one_minus_beta2 = 1.0f - cfg.beta2;
  a.step_size = static_cast<float>(cfg.lr / bc1);
  a.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  a.eps = cfg.eps;
  bool vec = aligned16(params) && aligned16(grads) && aligned16(m) && aligned16(v);
  DQ_LAUNCH(adam_kernel, grid_for(vec ? (n + 3) / 4 : n), kThreads, 0, s)
  (a, params, grads, m, v, n, vec);
  DQ_CUDA(cudaGetLastError());
}

}  // namespace dq
