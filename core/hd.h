// DQ_HD marks a function that the CPU code and the CUDA kernels share, so
// that both twins evaluate one formula in one order (core/nn/philox.h,
// core/qsm/dipole.h): __host__ __device__ under nvcc, a plain inline
// function elsewhere.
#pragma once

#if defined(__CUDACC__)
#define DQ_HD __host__ __device__ __forceinline__
#else
#define DQ_HD inline
#endif

namespace dq {

// a * b and a + b rounded once each, never fused into an FMA: nvcc contracts
// device code by default, and a shared formula must round on the GPU as on
// the CPU (built with -ffp-contract=off).
DQ_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
DQ_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

}  // namespace dq
