#include "core/qsm/tkd.h"

#include <cmath>

#include "core/error.h"

namespace dq {

std::vector<float> tkd_inverse_kernel(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                                      double threshold, double k0_value) {
  // |D(k)| is at most 2/3: a larger threshold truncates every frequency.
  if (!(threshold > 0.0 && threshold <= 2.0 / 3.0))
    fail("TKD threshold must be in (0, 2/3] (|D| is at most 2/3), got ", threshold);
  std::vector<float> d = dipole_kernel(dims, voxel_mm, b0_dir, k0_value);
  const float t = static_cast<float>(threshold);
  for (float& v : d) {
    if (std::fabs(v) > t)
      v = 1.0f / v;
    else
      v = v > 0.0f ? 1.0f / t : (v < 0.0f ? -1.0f / t : 0.0f);
  }
  return d;
}

void tkd(const float* field, const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
         double threshold, double k0_value, int64_t pad, float* chi) {
  if (pad < 0) fail("TKD padding must be >= 0, got ", pad);
  PaddedFilter(dims, pad,
               tkd_inverse_kernel(dims.padded(pad), voxel_mm, b0_dir, threshold, k0_value))
      .apply(field, chi);
}

Tensor tkd(const Tensor& field, const Vec3& voxel_mm, const Vec3& b0_dir, double threshold,
           double k0_value, int64_t pad) {
  const Dims3 dims = volume_dims(field, "field");
  Tensor chi = Tensor::zeros(field.shape());
  tkd(field.f32(), dims, voxel_mm, b0_dir, threshold, k0_value, pad, chi.f32());
  return chi;
}

Tensor tkd_patches(const Tensor& field, const Vec3& voxel_mm, const Vec3& b0_dir, double threshold,
                   double k0_value) {
  const Shape& s = field.shape();
  if (field.dtype() != DType::f32 || field.device() != Device::cpu || s.rank() != 5 || s[4] != 1)
    fail("tkd_patches: field must be host fp32 (N, P, P, P, 1), got ", s.str());
  Tensor chi = Tensor::zeros(s);
  if (s.numel() == 0) return chi;
  const Dims3 dims{s[1], s[2], s[3]};
  PaddedFilter filter(dims, 0, tkd_inverse_kernel(dims, voxel_mm, b0_dir, threshold, k0_value));
  const float* in = field.f32();
  float* out = chi.f32();
  for (int64_t n = 0; n < s[0]; ++n) filter.apply(in + n * dims.numel(), out + n * dims.numel());
  return chi;
}

}  // namespace dq
