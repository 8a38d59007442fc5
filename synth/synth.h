// The synthetic training data of DeepQSM (Bollmann et al. 2019, sec. 2.2),
// on the CPU: random cubes and spheres of uniform susceptibility in an
// n^3 volume, convolved with the dipole kernel, cut into random patches.
//
// Every random number comes from the counter RNG (core/philox.h) keyed by
// (seed, volume index), so volume v is the same whoever generates it, in
// whatever order, and a GPU rasteriser can rasterise the very same shape
// list. Keys, with vkey = key_for(key_for(seed, kSynthPurpose), volume):
//   key_for(vkey, 0)  counters 0, 1:        number of cubes, of spheres
//   key_for(vkey, 1)  counters 0..total-2:  the order of the shapes (shuffle)
//   key_for(vkey, 2)  counters 5i..5i+4:    shape i's centre x, y, z, size, chi
//   key_for(vkey, 3)  counters 3p..3p+2:    patch p's corner z, y, x
// Shape i's parameters depend only on i, not on how many shapes precede it.
//
// Order: the paper says the shapes were "randomly added to the image", so
// the n_cubes cubes and n_spheres spheres are put in a uniformly random order
// (Fisher-Yates shuffle of the kinds) and painted in that order, later shapes
// overwriting earlier ones; the background is 0 ppm.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "synth/recipe.h"

namespace dq {

constexpr uint64_t kSynthPurpose = 0x53594E5448ull;  // "SYNTH": the generator's branch of the seed

enum class ShapeKind : uint8_t { cube, sphere };

// One shape in voxel coordinates: voxel (x, y, z) = (i, j, k) has its centre
// at (i, j, k); the volume spans [-0.5, n - 0.5] per axis.
struct SynthShape {
  ShapeKind kind = ShapeKind::cube;
  float centre[3] = {0, 0, 0};  // (x, y, z), voxels, uniform over [-0.5, n - 0.5]
  float size = 0;               // cube side or sphere diameter, voxels
  float chi = 0;                // ppm
};

// Rasterisation rule (any other rasteriser must follow it bit for bit; all
// arithmetic is fp32 with no fused multiply-add):
//   cube:   voxel inside iff |i - cx| <= size/2 and likewise for j, k
//   sphere: voxel inside iff (i-cx)^2 + (j-cy)^2 + (k-cz)^2 <= (size/2)^2,
//           summed left to right
// with i, j, k converted to float and size/2 computed as size * 0.5f.
bool shape_contains(const SynthShape& s, int64_t i, int64_t j, int64_t k);

// A (seed, volume) pair's shapes, in painting order. Validates the recipe.
std::vector<SynthShape> draw_shapes(const Recipe& r, uint64_t seed, int64_t volume);

// Paints the shapes, in order, into chi (n, n, n) = (z, y, x), n = volume_size.
// Voxels no shape covers are left untouched (callers pass zeros). Each shape
// is visited only over its bounding box.
void rasterise(const Recipe& r, const std::vector<SynthShape>& shapes, float* chi);

struct SynthVolume {
  int64_t n = 0;             // voxels per side
  std::vector<float> chi;    // (n, n, n) = (z, y, x), ppm
  std::vector<float> field;  // (n, n, n), ppm: forward_field(chi) with the recipe's kernel
};

// draw_shapes + rasterise + forward_field (voxel_mm, b0_dir, dipole_k0, pad).
SynthVolume generate_volume(const Recipe& r, uint64_t seed, int64_t volume);

// `count` patches of patch_size^3 with random corners, each fully inside
// the volume, written back to back as (count, P, P, P) = NDHWC with C = 1.
// The corners are those of draw_patch_corner.
void cut_patches(const Recipe& r, const SynthVolume& v, uint64_t seed, int64_t volume, int count,
                 float* field_out, float* chi_out);

// Corner (z, y, x) of patch p of a volume, each uniform in {0, ..., n - P}.
std::array<int64_t, 3> draw_patch_corner(const Recipe& r, uint64_t seed, int64_t volume, int p);

// What the trainer consumes: volumes first_volume .. first_volume + n_volumes - 1,
// patches_per_volume patches each, volume-major. Validates the recipe.
// Volumes are independent and nothing here holds shared state (FFTW planning
// is serialised in core/dipole), so callers may split a range across threads
// and get the same patches.
struct PatchSet {
  Tensor field, chi;  // (N, P, P, P, 1) fp32 host, N = n_volumes * patches_per_volume
};
PatchSet generate_patches(const Recipe& r, uint64_t seed, int64_t first_volume, int64_t n_volumes);

}  // namespace dq
