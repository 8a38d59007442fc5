// The synthetic-data recipe: what the generator draws. Defaults are the
// DeepQSM paper's (Bollmann et al. 2019, section 2.2): a 160^3 volume with
// 80-120 cubes and 80-120 spheres, sides/diameters 10-40 % of the volume,
// chi ~ U(-0.2, 0.2) ppm, later shapes overwriting earlier ones, convolved
// with the dipole kernel (B0 along z, 1 mm isotropic); 100 random 64^3
// (field, chi) patches per volume.
//
// The options below the paper's block go beyond the paper; each is off in
// the defaults, so a default Recipe generates exactly the paper's data.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace dq {

struct Recipe {
  int64_t volume_size = 160;  // voxels per side of the simulated volume
  int cubes_min = 80, cubes_max = 120;
  int spheres_min = 80, spheres_max = 120;
  // Shape size (cube side, box side, sphere diameter) as a fraction of the
  // volume's shortest physical side, volume_size * min(voxel_mm) mm, so
  // shapes are cubes and spheres in mm whatever the voxel size.
  double size_min = 0.10, size_max = 0.40;
  double chi_min = -0.2, chi_max = 0.2;  // ppm
  int64_t patch_size = 64;
  int patches_per_volume = 100;
  std::array<double, 3> voxel_mm{1.0, 1.0, 1.0};  // (x, y, z)
  std::array<double, 3> b0_dir{0.0, 0.0, 1.0};    // unit vector, (x, y, z)
  double dipole_k0 = 1.0 / 3.0;                   // D(k = 0); DeepQSM lineage uses 1/3
  int64_t pad = 0;                                // zero padding per side before the FFT

  // ---- beyond the paper (all off by default)
  // Boxes ("rectangles"): three sides drawn independently from `size`.
  int rects_min = 0, rects_max = 0;
  // Shapes add their chi to what lies beneath instead of overwriting it.
  bool additive = false;
  // Distribution of each shape's chi: "uniform" over [chi_min, chi_max],
  // "normal" N(chi_mean, chi_std^2) (not clipped), or "discrete": one of
  // chi_values with equal probability.
  std::string chi_dist = "uniform";
  double chi_mean = 0.0, chi_std = 0.1;  // ppm, for "normal"
  std::vector<double> chi_values;        // ppm, for "discrete"
  // Each volume's B0 direction is drawn uniformly over the spherical cap of
  // this half-angle around b0_dir (degrees; 0 = always b0_dir).
  double b0_cone_deg = 0.0;
  // Standard deviation of white Gaussian noise added to the field (ppm).
  // With noise_std_max > noise_std, each volume draws its own level uniformly
  // from [noise_std, noise_std_max], so a network sees clean and noisy fields
  // alike instead of learning one noise level (JSON: "noise_std": [min, max]).
  double noise_std = 0.0, noise_std_max = 0.0;
  // High-susceptibility lesions (haemorrhage, calcification): each shape,
  // with probability lesion_prob, takes its chi uniformly from
  // [lesion_chi_min, lesion_chi_max] instead of chi_dist.
  double lesion_prob = 0.0;
  double lesion_chi_min = 0.4, lesion_chi_max = 1.6;  // ppm
  // A brain-like region: with probability region_prob a volume keeps its
  // sources only inside a random ellipsoid (chi is zeroed outside before the
  // dipole convolution) and its field only there (zeroed after the noise),
  // as a local field is after background-field removal: known inside a
  // mask, zero outside, produced by the tissue inside. Semi-axes are drawn
  // per axis from [region_size_min, region_size_max] x volume_size voxels.
  double region_prob = 0.0;
  double region_size_min = 0.25, region_size_max = 0.45;

  // ---- brain-shaped volumes (synth/brain.h; off by default). Each volume
  // is brain-shaped with probability brain_prob, a paper-recipe volume
  // otherwise: the mix with the paper's recipe. Distributions and sources:
  // docs/config.md, "Brain-shaped volumes".
  double brain_prob = 0.0;
  std::string brain_templates;     // folder of gm/wm/t1.nii.gz; "" = brain_templates_dir's default
  double brain_flip = 0.5;         // probability per template axis
  double brain_rotate_deg = 15.0;  // each Euler angle uniform in +-this
  double brain_scale_min = 0.8, brain_scale_max = 1.05;  // per axis
  double brain_shift_mm = 8.0;                           // per axis, uniform in +-this
  double brain_warp_mm = 4.0;                            // deformation std, uniform in [0, this]
  double brain_texture = 0.02;                           // texture std (ppm), uniform in [0, this]
  int brain_veins_min = 20, brain_veins_max = 60;
  int brain_shapes_min = 0, brain_shapes_max = 10;  // cubes and spheres inside the brain
  double brain_shape_mm_min = 3.0, brain_shape_mm_max = 20.0;
  double brain_lesion_prob = 0.3;                                 // a shape is a haemorrhage
  double brain_lesion_chi_min = 0.3, brain_lesion_chi_max = 3.0;  // ppm
  double brain_background = 0.02;  // residual background rms (ppm), uniform in [0, this]
  // Thick slices (brain volumes only): with probability aniso_prob the field
  // and chi are averaged over slabs of a factor from aniso_factor along one
  // random axis and interpolated back, as deepqsm-infer sees an anisotropic
  // acquisition after resampling it to isotropic voxels.
  double aniso_prob = 0.0;
  double aniso_factor_min = 1.5, aniso_factor_max = 3.0;

  // Throws dq::Error naming the offending field when the recipe cannot work
  // (negative or too-large sizes, a patch larger than the volume, empty counts).
  void validate() const;
  void validate_brain() const;  // the brain_* and aniso_* keys (part of validate)

  // Shape size unit: volume_size * min(voxel_mm), in mm (see size_min).
  double size_reference_mm() const;
};

}  // namespace dq
