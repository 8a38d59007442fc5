// Truncated k-space division (Shmueli et al. 2009, Wharton et al. 2010): the
// classical one-step dipole inversion, our baseline in training validation.
//
//   chi = IFFT( FFT(field) . Dinv_t ),  Dinv_t(k) = 1 / D(k)       if |D(k)| > t
//                                                    sign(D(k)) / t otherwise
//
// i.e. D is clamped to +-t near the magic-angle cone, keeping its sign; where
// D is exactly 0 (D(0) when k0_value = 0) Dinv_t is 0, since that component
// of chi cannot be recovered. On isotropic grids with B0 along an axis D is
// also 0 up to rounding on bins such as k ~ (1, 1, 1); the field has no
// energy there, so chi comes back ~0 on them whatever Dinv_t is. No correction for TKD's known
// underestimation of chi is applied. Conventions (axes, units, D) are those of core/qsm/dipole.h.
#pragma once
#include <cstdint>
#include <vector>

#include "core/nn/tensor.h"
#include "core/qsm/dipole.h"

namespace dq {

constexpr double kTkdThreshold = 0.19;  // Wharton et al. 2010's truncation value

// Dinv_t on the R2C half spectrum of `dims`, (nz, ny, nx/2 + 1).
std::vector<float> tkd_inverse_kernel(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                                      double threshold, double k0_value);

// chi from a field volume (both (nz, ny, nx), ppm; they may alias), with `pad`
// zero voxels per side added before the FFT and cropped after.
void tkd(const float* field, const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
         double threshold, double k0_value, int64_t pad, float* chi);
// The same on a (D, H, W) or (1, D, H, W, 1) host fp32 tensor.
Tensor tkd(const Tensor& field, const Vec3& voxel_mm, const Vec3& b0_dir,
           double threshold = kTkdThreshold, double k0_value = 1.0 / 3.0, int64_t pad = 0);

// Batch TKD of field patches (N, P, P, P, 1) -> chi patches (N, P, P, P, 1),
// each patch inverted on its own (unpadded, periodic) grid. One plan and one
// kernel serve the whole batch. Patches need not be cubic.
Tensor tkd_patches(const Tensor& field, const Vec3& voxel_mm, const Vec3& b0_dir,
                   double threshold = kTkdThreshold, double k0_value = 1.0 / 3.0);

}  // namespace dq
