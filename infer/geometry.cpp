// deepqsm-infer's geometry stages: to an isotropic work grid with B0 along z
// and back (infer/stages.h; the resampling itself is core/qsm/volume_ops.h).
#include <algorithm>
#include <cstdio>

#include "infer/stages.h"

namespace dq {

WorkGeometry fix_geometry(const InferInputs& in, const InferOptions& opt) {
  const Volume& field = in.field;
  const double tilt = angle_to_z_deg(opt.b0_dir);
  const double vmin = *std::min_element(field.voxel_mm.begin(), field.voxel_mm.end());
  const double vmax = *std::max_element(field.voxel_mm.begin(), field.voxel_mm.end());
  const bool rotate = tilt > opt.max_tilt_deg;
  const bool iso = vmax / vmin > opt.max_anisotropy;
  WorkGeometry geo;
  geo.input = Grid{field.dims(), field.voxel_mm};
  geo.work = geo.input;
  geo.resampled = rotate || iso;
  if (!geo.resampled) {
    std::printf("B0:     along z%s; voxels isotropic within %.2f: no resampling\n",
                tilt > 0 ? " (within the tolerance)" : "", opt.max_anisotropy);
    return geo;
  }
  // R takes the input's axes to the work axes (R b = z); resample() reads
  // in(M p), so going to the work grid uses M = R^T and coming back M = R.
  if (rotate) geo.R = rotation_to_z(opt.b0_dir);
  geo.work = rotated_bounding_grid(geo.input, transpose(geo.R), vmin);
  geo.field = resample(field.data.data(), geo.input, geo.work, transpose(geo.R));
  std::vector<float> mf(in.mask.begin(), in.mask.end());
  const std::vector<float> wm = resample(mf.data(), geo.input, geo.work, transpose(geo.R));
  geo.mask.resize(wm.size());
  for (size_t i = 0; i < wm.size(); ++i) geo.mask[i] = wm[i] > 0.5f;
  if (rotate)
    std::printf(
        "B0:     direction %s is %.2f deg from z: resampled (trilinear) so B0 is along z, "
        "inverted, resampled back\n",
        vec_str(opt.b0_dir).c_str(), tilt);
  if (iso)
    std::printf(
        "voxels: anisotropic (ratio %.3f > %.3f): resampled to %.4g mm isotropic and back\n",
        vmax / vmin, opt.max_anisotropy, vmin);
  std::printf("work:   grid %s, voxel %s mm\n", dims_str(geo.work.dims).c_str(),
              vec_str(geo.work.voxel_mm).c_str());
  return geo;
}

const std::vector<float>& work_field(const InferInputs& in, const WorkGeometry& geo) {
  return geo.resampled ? geo.field : in.field.data;
}

std::vector<float> restore_geometry(std::vector<float> work_chi, const WorkGeometry& geo,
                                    const InferInputs& in) {
  std::vector<float> chi;
  if (geo.resampled) {
    apply_mask(work_chi.data(), geo.mask.data(), geo.work.dims.numel());
    chi = resample(work_chi.data(), geo.work, geo.input, geo.R);
  } else {
    chi = std::move(work_chi);
  }
  apply_mask(chi.data(), in.mask.data(), in.field.numel());
  return chi;
}

}  // namespace dq
