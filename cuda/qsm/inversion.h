// The classical dipole inversions and the CG refinement on the GPU with
// cuFFT (R2C / C2R): the twins of core/qsm/tkd.h, core/qsm/inversion.h and
// core/qsm/refine.h. Same algorithms, same k-space filters (computed by the CPU
// functions and uploaded, so they are bit-identical), same arithmetic order
// where it matters; results agree with the CPU to fp32 rounding
// (tests/gpu/test_inversion_gpu.cpp). Inputs and outputs are host arrays;
// the work happens on the current device, synchronously.
#pragma once
#include <cstdint>
#include <vector>

#include "core/qsm/dipole.h"
#include "core/qsm/inversion.h"
#include "core/qsm/refine.h"

namespace dq {

// core/qsm/tkd.h's tkd().
void cuda_tkd(const float* field, const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
              double threshold, double k0_value, int64_t pad, float* chi);

// core/qsm/inversion.h's tikhonov().
void cuda_tikhonov(const float* field, const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
                   const Vec3& b0_dir, double lambda, TikhonovReg reg, double k0_value, int64_t pad,
                   float* chi);

// core/qsm/inversion.h's tv_admm(), objective history included.
int cuda_tv_admm(const float* field, const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
                 const Vec3& b0_dir, const TvOptions& opt, double k0_value, int64_t pad, float* chi,
                 std::vector<double>* objective = nullptr);

// core/qsm/refine.h's refine_chi().
void cuda_refine_chi(const float* field, const float* chi_net, const uint8_t* mask,
                     const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                     const RefineOptions& opt, float* chi,
                     std::vector<double>* objective = nullptr);

}  // namespace dq
