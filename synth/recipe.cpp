// Recipe::validate: refuses recipes the generator cannot honour, naming each
// field as it is spelt in the JSON config ("data.size") so the message points
// at the line to fix.
#include "synth/recipe.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace dq {
namespace {

// The simulated (padded) volume is held in memory several times over (chi,
// field, complex FFT buffers); beyond 1024^3 that is tens of GiB, which is a
// typo far more often than an intention.
constexpr int64_t kMaxSide = 1024;

void check_finite(double x, const char* field) {
  if (!std::isfinite(x)) fail(field, ": ", x, " is not a finite number");
}

// Susceptibilities and field noise in ppm: tissue spans about -10 (air
// against tissue) to a few ppm (haemorrhage, calcification); beyond 100 ppm
// sums of shapes and the FFT overflow float into Inf and NaN volumes.
constexpr double kMaxPpm = 100.0;
void check_ppm(double x, const char* field) {
  check_finite(x, field);
  if (std::fabs(x) > kMaxPpm) fail(field, ": ", x, " ppm is beyond +-", kMaxPpm, " ppm");
}

void check_counts(int lo, int hi, const char* field) {
  if (lo < 0 || hi < 0) fail(field, ": counts must be >= 0, got [", lo, ", ", hi, "]");
  if (lo > hi) fail(field, ": min ", lo, " is larger than max ", hi);
}

}  // namespace

void Recipe::validate() const {
  if (volume_size <= 0) fail("data.volume_size: must be positive, got ", volume_size);
  if (pad < 0) fail("data.pad: must be >= 0, got ", pad);
  // Each term is checked first so the sum cannot overflow.
  if (volume_size > kMaxSide || pad > kMaxSide || volume_size + 2 * pad > kMaxSide)
    fail("data.volume_size: ", volume_size, " + 2 * data.pad ", pad, " exceeds ", kMaxSide,
         " voxels per side");
  if (patch_size <= 0) fail("data.patch_size: must be positive, got ", patch_size);
  if (patch_size > volume_size)
    fail("data.patch_size: ", patch_size, " is larger than data.volume_size ", volume_size);
  if (patches_per_volume < 1)
    fail("data.patches_per_volume: must be >= 1, got ", patches_per_volume);

  check_counts(cubes_min, cubes_max, "data.cubes");
  check_counts(spheres_min, spheres_max, "data.spheres");
  check_counts(rects_min, rects_max, "data.rectangles");
  if (cubes_max == 0 && spheres_max == 0 && rects_max == 0)
    fail(
        "data.cubes, data.spheres, data.rectangles: empty counts (all maxima are 0, so every "
        "volume would be zero)");

  check_finite(size_min, "data.size");
  check_finite(size_max, "data.size");
  if (!(size_min > 0 && size_max <= 1))
    fail("data.size: fractions of the volume must lie in (0, 1], got [", size_min, ", ", size_max,
         "]");
  if (size_min > size_max) fail("data.size: min ", size_min, " is larger than max ", size_max);

  check_ppm(chi_min, "data.chi");
  check_ppm(chi_max, "data.chi");
  if (chi_min > chi_max) fail("data.chi: min ", chi_min, " is larger than max ", chi_max, " ppm");

  for (double v : voxel_mm) {
    check_finite(v, "data.voxel_mm");
    if (v <= 0) fail("data.voxel_mm: voxel sizes must be > 0 mm, got ", v);
  }
  for (double v : b0_dir) check_finite(v, "data.b0_dir");
  const double n = std::sqrt(b0_dir[0] * b0_dir[0] + b0_dir[1] * b0_dir[1] + b0_dir[2] * b0_dir[2]);
  // The config parser normalises b0_dir, so only a Recipe built in code can
  // get here with another length; the dipole kernel assumes a unit vector.
  if (std::fabs(n - 1.0) > 1e-6) fail("data.b0_dir: must be a unit vector, its length is ", n);
  check_finite(dipole_k0, "data.dipole_k0");
  // D(k) lies in [-2/3, 1/3] elsewhere; the conventions are 0 and 1/3.
  if (std::fabs(dipole_k0) > 1.0)
    fail("data.dipole_k0: ", dipole_k0, " is outside [-1, 1] (the conventions are 0 and 1/3)");

  // chi_mean and chi_std are checked whatever chi_dist is, as documented:
  // a wrong value should not wait until someone switches the distribution on.
  check_ppm(chi_mean, "data.chi_mean");
  check_ppm(chi_std, "data.chi_std");
  if (chi_std < 0) fail("data.chi_std: the standard deviation must be >= 0 ppm, got ", chi_std);
  if (chi_dist == "discrete") {
    if (chi_values.empty())
      fail("data.chi_values: chi_dist \"discrete\" needs at least one value (ppm)");
    for (double v : chi_values) check_ppm(v, "data.chi_values");
  } else if (chi_dist != "uniform" && chi_dist != "normal") {
    fail("data.chi_dist: \"", chi_dist, "\" is not one of \"uniform\", \"normal\", \"discrete\"");
  }
  check_finite(b0_cone_deg, "data.b0_cone_deg");
  if (b0_cone_deg < 0 || b0_cone_deg > 180)
    fail("data.b0_cone_deg: the cone half-angle must lie in [0, 180] degrees, got ", b0_cone_deg);
  check_ppm(noise_std, "data.noise_std");
  if (noise_std < 0) fail("data.noise_std: must be >= 0 ppm, got ", noise_std);
  check_ppm(noise_std_max, "data.noise_std");
  if (noise_std_max != 0 && noise_std_max < noise_std)
    fail("data.noise_std: [min, max] needs min <= max, got [", noise_std, ", ", noise_std_max, "]");
  check_finite(lesion_prob, "data.lesion_prob");
  if (lesion_prob < 0 || lesion_prob > 1)
    fail("data.lesion_prob: a probability must lie in [0, 1], got ", lesion_prob);
  check_ppm(lesion_chi_min, "data.lesion_chi");
  check_ppm(lesion_chi_max, "data.lesion_chi");
  if (lesion_chi_min > lesion_chi_max)
    fail("data.lesion_chi: min ", lesion_chi_min, " is larger than max ", lesion_chi_max, " ppm");
  check_finite(region_prob, "data.region_prob");
  if (region_prob < 0 || region_prob > 1)
    fail("data.region_prob: a probability must lie in [0, 1], got ", region_prob);
  check_finite(region_size_min, "data.region_size");
  check_finite(region_size_max, "data.region_size");
  if (region_size_min <= 0 || region_size_max > 0.5 || region_size_min > region_size_max)
    fail(
        "data.region_size: semi-axes are fractions of the volume side with 0 < min <= max <= "
        "0.5, got [",
        region_size_min, ", ", region_size_max, "]");
  validate_brain();
}

void Recipe::validate_brain() const {
  const auto prob = [](double p, const char* field) {
    check_finite(p, field);
    if (p < 0 || p > 1) fail(field, ": a probability must lie in [0, 1], got ", p);
  };
  const auto range = [](double lo, double hi, double min, double max, const char* field,
                        const char* unit) {
    check_finite(lo, field);
    check_finite(hi, field);
    if (lo < min || hi > max || lo > hi)
      fail(field, ": [", lo, ", ", hi, "] ", unit, " must satisfy ", min,
           " <= min <= max <= ", max);
  };
  prob(brain_prob, "data.brain_prob");
  prob(brain_flip, "data.brain_flip");
  prob(brain_lesion_prob, "data.brain_lesion_prob");
  prob(aniso_prob, "data.aniso_prob");
  range(0, brain_rotate_deg, 0, 180, "data.brain_rotate_deg", "degrees");
  range(brain_scale_min, brain_scale_max, 0.5, 2.0, "data.brain_scale", "");
  range(0, brain_shift_mm, 0, 100, "data.brain_shift_mm", "mm");
  range(0, brain_warp_mm, 0, 20, "data.brain_warp_mm", "mm");
  range(0, brain_texture, 0, 1, "data.brain_texture", "ppm");
  range(0, brain_background, 0, 1, "data.brain_background", "ppm");
  range(brain_shape_mm_min, brain_shape_mm_max, 0.5, 100, "data.brain_shape_mm", "mm");
  range(brain_lesion_chi_min, brain_lesion_chi_max, -kMaxPpm, kMaxPpm, "data.brain_lesion_chi",
        "ppm");
  range(aniso_factor_min, aniso_factor_max, 1, 8, "data.aniso_factor", "");
  check_counts(brain_veins_min, brain_veins_max, "data.brain_veins");
  check_counts(brain_shapes_min, brain_shapes_max, "data.brain_shapes");
  if (brain_veins_max > 10000 || brain_shapes_max > 10000)
    fail("data.brain_veins, data.brain_shapes: at most 10000 each");
}

double Recipe::size_reference_mm() const {
  return static_cast<double>(volume_size) *
         std::min(voxel_mm[0], std::min(voxel_mm[1], voxel_mm[2]));
}

}  // namespace dq
