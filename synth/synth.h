// The synthetic training data of DeepQSM (Bollmann et al. 2019, sec. 2.2),
// on the CPU: random cubes and spheres of uniform susceptibility in an
// n^3 volume, convolved with the dipole kernel, cut into random patches.
// synth/synth_gpu.h is the GPU twin; it draws the same shapes (draw_shapes,
// on the host), rasterises them by the same rule and must give the same chi
// bit for bit.
//
// Every random number comes from the counter RNG (core/nn/philox.h) keyed by
// (seed, volume index), so volume v is the same whoever generates it, in
// whatever order. Keys, with vkey = synth_volume_key(seed, volume):
//   key_for(vkey, 0)  counters 0, 1, 2:     number of cubes, spheres, boxes
//   key_for(vkey, 1)  counters 0..total-2:  the order of the shapes (shuffle)
//   key_for(vkey, 2)  counters 5i..5i+4:    shape i's centre x, y, z, size, chi
//   key_for(vkey, 3)  counters 3p..3p+2:    patch p's corner z, y, x
//   key_for(vkey, 4)  counters 8i..8i+4:    shape i's extras: box sides y, z;
//                                           second normal draw; lesion coin, lesion chi
//   key_for(vkey, 5)  counters 0, 1:        the volume's B0 direction in the cone
//   key_for(vkey, 6)  counters 2m, 2m+1:    field noise at voxel m (flat index)
//   key_for(vkey, 7)  counters 0..6:        region coin, centre x, y, z, semi-axes x, y, z
//   key_for(vkey, 8)  counter 0:            the volume's noise level, when drawn from a range
//   key_for(vkey, 9)  (its own sub-keys):   brain-shaped volumes (synth/brain.h)
// Shape i's parameters depend only on i, not on how many shapes precede it,
// and the options beyond the paper draw from their own streams, so the
// paper recipe's volumes do not change when an option is added.
//
// Order: the paper says the shapes were "randomly added to the image", so
// the shapes are put in a uniformly random order (Fisher-Yates shuffle of
// the kinds) and painted in that order, later shapes overwriting earlier
// ones (or adding to them, Recipe::additive); the background is 0 ppm.
//
// Geometry: centres are in voxels, sizes in mm (Recipe::size_min), so with
// anisotropic voxels a cube is a cube in mm and spans a different number of
// voxels per axis.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "core/nn/tensor.h"
#include "core/qsm/dipole.h"
#include "synth/recipe.h"

namespace dq {

constexpr uint64_t kSynthPurpose = 0x53594E5448ull;  // "SYNTH": the generator's branch of the seed

// Sub-streams of a volume's key (see the table above).
enum SynthStream : uint64_t {
  kSynthCounts = 0,
  kSynthOrder = 1,
  kSynthShapes = 2,
  kSynthCorners = 3,
  kSynthExtras = 4,
  kSynthB0 = 5,
  kSynthNoise = 6,
  kSynthRegion = 7,
  kSynthNoiseLevel = 8
};

uint64_t synth_volume_key(uint64_t seed, int64_t volume);

enum class ShapeKind : uint8_t { cube, sphere, box };

// One shape: voxel (x, y, z) = (i, j, k) has its centre at (i, j, k); the
// volume spans [-0.5, n - 0.5] per axis.
struct SynthShape {
  ShapeKind kind = ShapeKind::cube;
  float centre[3] = {0, 0, 0};  // (x, y, z), voxels, uniform over [-0.5, n - 0.5]
  float size[3] = {0, 0, 0};    // extent along (x, y, z), mm: cube side and sphere
                                // diameter (all three equal) or box sides
  float chi = 0;                // ppm
};

// Voxel size as the rasteriser uses it: fp32 (x, y, z), mm.
std::array<float, 3> raster_voxel_mm(const Recipe& r);

// Rasterisation rule (any other rasteriser must follow it bit for bit; all
// arithmetic is fp32, one operation per statement so no compiler may fuse a
// multiply-add; the GPU uses __fsub_rn/__fmul_rn/__fadd_rn). With
// d_a = (float(i_a) - centre[a]) * voxel[a], the offset in mm along axis a:
//   cube, box: inside iff |d_a| <= size[a] * 0.5f for a = x, y, z
//   sphere:    inside iff (d_x*d_x + d_y*d_y) + d_z*d_z <= h*h, h = size[0] * 0.5f
// With 1 mm voxels d_a is the offset in voxels exactly (x * 1.0f == x).
bool shape_contains(const SynthShape& s, const std::array<float, 3>& voxel, int64_t i, int64_t j,
                    int64_t k);

// A (seed, volume) pair's shapes, in painting order. Validates the recipe.
std::vector<SynthShape> draw_shapes(const Recipe& r, uint64_t seed, int64_t volume);

// The B0 direction of a volume: b0_dir itself, or, with b0_cone_deg > 0, a
// direction drawn uniformly over the spherical cap of that half-angle around
// it. Unit length, (x, y, z).
Vec3 volume_b0(const Recipe& r, uint64_t seed, int64_t volume);

// Paints the shapes, in order, into chi (n, n, n) = (z, y, x), n = volume_size:
// each covered voxel becomes the shape's chi, or (additive) gains it. Voxels
// no shape covers are left untouched (callers pass zeros). Each shape is
// visited only over its bounding box.
void rasterise(const Recipe& r, const std::vector<SynthShape>& shapes, float* chi);

// Standard normal draw for element `index` under `key` (Box-Muller on two
// philox_uniform draws at counters 2 index and 2 index + 1, in double).
double synth_gauss(uint64_t key, uint64_t index);

// The volume's noise level (ppm): noise_std, or with a range
// (noise_std_max > noise_std) a uniform draw from it.
double volume_noise_std(const Recipe& r, uint64_t seed, int64_t volume);

// field[m] += volume_noise_std * synth_gauss(noise key of the volume, m) for
// every voxel m of an (n, n, n) field. Does nothing when that level is 0.
void add_field_noise(const Recipe& r, uint64_t seed, int64_t volume, float* field);

// A volume's brain-like region (Recipe::region_prob): an axis-aligned
// ellipsoid. Membership rule, fp32, one operation per statement (the GPU
// uses __fsub_rn/__fmul_rn/__fadd_rn): with u_a = (float(i_a) - centre[a])
// * inv_axis[a], voxel (i, j, k) is inside iff (u_x*u_x + u_y*u_y) + u_z*u_z
// <= 1.
struct SynthRegion {
  bool active = false;            // false: the whole volume
  float centre[3] = {0, 0, 0};    // (x, y, z), voxels: the volume centre +- 10 % of its side
  float inv_axis[3] = {1, 1, 1};  // 1 / semi-axis, (x, y, z), 1 / voxels
};

SynthRegion draw_region(const Recipe& r, uint64_t seed, int64_t volume);
bool region_contains(const SynthRegion& g, int64_t i, int64_t j, int64_t k);
// Zeros an (n, n, n) volume outside the region (nothing when inactive).
void apply_region(const SynthRegion& g, int64_t n, float* v);

struct SynthVolume {
  int64_t n = 0;              // voxels per side
  std::vector<float> chi;     // (n, n, n) = (z, y, x), ppm
  std::vector<float> field;   // (n, n, n), ppm: forward_field(chi) with the recipe's kernel
  Vec3 b0{0.0, 0.0, 1.0};     // this volume's B0 direction (volume_b0)
  std::vector<uint8_t> mask;  // brain-shaped volumes (synth/brain.h): the brain; else empty
};

// A brain-shaped volume when volume_is_brain (synth/brain.h's
// generate_brain_volume), otherwise:
// draw_shapes + rasterise + apply_region(chi) + forward_field (voxel_mm,
// volume_b0, dipole_k0, pad) + add_field_noise + apply_region(field).
SynthVolume generate_volume(const Recipe& r, uint64_t seed, int64_t volume);

// `count` patches of patch_size^3 with random corners, each fully inside
// the volume, written back to back as (count, P, P, P) = NDHWC with C = 1.
// The corners are those of draw_patch_corner.
void cut_patches(const Recipe& r, const SynthVolume& v, uint64_t seed, int64_t volume, int count,
                 float* field_out, float* chi_out);

// Copies the patch with corner c (z, y, x) out of an (n, n, n) volume into
// a (P, P, P) block.
void copy_patch(const float* volume, int64_t n, const std::array<int64_t, 3>& c, int64_t P,
                float* out);

// Corner (z, y, x) of patch p of a volume, each uniform in {0, ..., n - P}.
std::array<int64_t, 3> draw_patch_corner(const Recipe& r, uint64_t seed, int64_t volume, int p);

// What the trainer consumes: volumes first_volume .. first_volume + n_volumes - 1,
// patches_per_volume patches each, volume-major. Validates the recipe.
// Volumes are independent and nothing here holds shared state (FFTW planning
// is serialised in core/qsm/dipole.cpp), so callers may split a range across threads
// and get the same patches.
struct PatchSet {
  Tensor field, chi;  // (N, P, P, P, 1) fp32 host, N = n_volumes * patches_per_volume
};
PatchSet generate_patches(const Recipe& r, uint64_t seed, int64_t first_volume, int64_t n_volumes);
// The zero-filled PatchSet for volumes [first_volume, first_volume + n_volumes)
// of a validated recipe, which generate_patches and its GPU twin fill.
PatchSet empty_patch_set(const Recipe& r, int64_t first_volume, int64_t n_volumes);

}  // namespace dq
