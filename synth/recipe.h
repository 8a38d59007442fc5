// The synthetic-data recipe: what the generator draws. Defaults are the
// DeepQSM paper's (Bollmann et al. 2019, section 2.2): a 160^3 volume with
// 80-120 cubes and 80-120 spheres, sides/diameters 10-40 % of the volume,
// chi ~ U(-0.2, 0.2) ppm, later shapes overwriting earlier ones, convolved
// with the dipole kernel (B0 along z, 1 mm isotropic); 100 random 64^3
// (field, chi) patches per volume.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace dq {

struct Recipe {
  int64_t volume_size = 160;       // voxels per side of the simulated volume
  int cubes_min = 80, cubes_max = 120;
  int spheres_min = 80, spheres_max = 120;
  double size_min = 0.10, size_max = 0.40;  // fraction of volume_size
  double chi_min = -0.2, chi_max = 0.2;      // ppm
  int64_t patch_size = 64;
  int patches_per_volume = 100;
  std::array<double, 3> voxel_mm{1.0, 1.0, 1.0};  // (x, y, z)
  std::array<double, 3> b0_dir{0.0, 0.0, 1.0};    // unit vector, (x, y, z)
  double dipole_k0 = 1.0 / 3.0;  // D(k = 0); DeepQSM lineage uses 1/3
  int64_t pad = 0;               // zero padding per side before the FFT

  // Throws dq::Error naming the offending field when the recipe cannot work
  // (negative or too-large sizes, a patch larger than the volume, empty counts).
  void validate() const;
};

}  // namespace dq
