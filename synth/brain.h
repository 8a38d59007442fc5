// Brain-shaped synthetic volumes (Recipe::brain_prob): real brain anatomy
// from the MNI152 2009 grey- and white-matter templates (scripts/
// prepare-templates.sh), under a random smooth deformation, flips, a
// rotation and a scaling, filled with random per-tissue susceptibility
// (white matter, cortex, seven iron-rich deep nuclei, CSF), a smooth
// texture, veins as random tubes, and the paper's cubes and spheres with
// haemorrhage-range values mixed in; then the dipole field with the
// recipe's B0 direction, a residual background field, noise and, with
// probability aniso_prob, thick slices along one axis as deepqsm-infer
// resamples them. Every distribution and its source is in docs/config.md
// ("Brain-shaped volumes"). The hybrid idea is NeXtQSM's (Cognolato et al.,
// Medical Image Analysis 2023): real brain shapes, synthetic susceptibility.
//
// The same anatomy with fixed literature susceptibilities and held-out
// deformation fields gives the in-vivo proxy cases (make_brain_proxy). The
// random draws are held out (the geometry parameters' ranges and the
// anatomy are not; docs/config.md): a training volume's geometry is drawn under
// key_for(synth_volume_key(seed, volume), kSynthBrain), i.e. below the
// generator's purpose kSynthPurpose, and a proxy case's under
// key_for(kProxyPurpose, case): a branch of the key tree the training
// sampler never enters, whatever the seed.
//
// Randomness of a training volume: bkey = key_for(synth_volume_key(seed,
// volume), kSynthBrain), then
//   key_for(bkey, 0)  the brain coin (counter 0)
//   key_for(bkey, 1)  geometry: flips, angles, scales, shift, warp grid
//   key_for(bkey, 2)  tissue susceptibilities
//   key_for(bkey, 3)  texture: level, spacing, grid values
//   key_for(bkey, 4)  veins
//   key_for(bkey, 5)  cubes, spheres, haemorrhages
//   key_for(bkey, 6)  residual background field
//   key_for(bkey, 7)  thick slices
// Geometry: the output grid is volume_size^3 voxels of voxel_mm centred on
// the origin; template coordinates are MNI mm (1 mm voxels).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dims.h"
#include "synth/recipe.h"
#include "synth/synth.h"

namespace dq {

constexpr uint64_t kSynthBrain = 9;                  // sub-stream of a volume's key (synth.h)
constexpr uint64_t kProxyPurpose = 0x50524F5859ull;  // "PROXY": the proxy cases' own branch

// Deep grey-matter nuclei (labels 1..7; 0 = none), paired left and right.
enum Nucleus : uint8_t {
  kNoNucleus = 0,
  kCaudate = 1,
  kPutamen = 2,
  kPallidus = 3,
  kThalamus = 4,
  kNigra = 5,
  kRedNucleus = 6,
  kDentate = 7
};
constexpr int kNuclei = 7;
const char* nucleus_name(int label);  // "caudate", ...; label 1..7

// The templates on their own grid, converted: tissue fractions in [0, 1]
// with gm + wm + csf = 1 inside the brain and 0 outside, and nuclei labels.
struct BrainAtlas {
  int64_t nx = 0, ny = 0, nz = 0;         // 197 x 233 x 189, 1 mm
  std::array<double, 3> origin{0, 0, 0};  // voxel index (x, y, z) of MNI (0, 0, 0)
  std::vector<float> gm, wm, csf;         // (nz, ny, nx)
  std::vector<uint8_t> nucleus;           // (nz, ny, nx), Nucleus
  int64_t brain_voxels = 0;
};

// Where the templates are: recipe.brain_templates when set, else
// $DEEPQSM_TEMPLATES, else <source tree>/data/mni152-2009.
std::string brain_templates_dir(const Recipe& r);
// Loads and converts the templates of `dir` (gm.nii.gz, wm.nii.gz,
// t1.nii.gz) once per process and path; thread-safe. A missing or wrong
// file fails with its name and "run scripts/prepare-templates.sh".
const BrainAtlas& load_brain_atlas(const std::string& dir);

// Whether volume `volume` of the recipe is brain-shaped (the brain_prob coin).
bool volume_is_brain(const Recipe& r, uint64_t seed, int64_t volume);

// A volume's anatomy after its random geometry, on the output grid.
struct BrainGeometry {
  bool flip[3] = {false, false, false};  // template axes x, y, z mirrored
  double angle_deg[3] = {0, 0, 0};       // rotations about x, y, z (applied x, then y, then z)
  double scale[3] = {1, 1, 1};           // per template axis
  double shift_mm[3] = {0, 0, 0};        // of the brain in the output grid
  double warp_mm = 0;                    // std of the control-point displacements
  double warp_spacing_mm = 24;           // control grid spacing
  uint64_t warp_key = 0;                 // Philox key of the control-point displacements
};

struct BrainAnatomy {
  std::vector<float> gm, wm, csf;  // (n, n, n) fractions
  std::vector<uint8_t> nucleus;    // (n, n, n) labels
  std::vector<uint8_t> mask;       // (n, n, n): gm + wm + csf >= 0.5
};

// Resamples the atlas through `g` onto an n^3 grid of voxel_mm (trilinear
// for the fractions, nearest for the labels).
BrainAnatomy sample_anatomy(const BrainAtlas& atlas, const BrainGeometry& g, int64_t n,
                            const std::array<double, 3>& voxel_mm);

// A training volume's geometry (ranges from the recipe).
BrainGeometry draw_brain_geometry(const Recipe& r, uint64_t seed, int64_t volume);

// Per-tissue susceptibility of one volume, ppm: [0] CSF, [1] white matter,
// [2] cortex (grey matter outside the nuclei), [2 + label] nucleus `label`.
using TissueChi = std::array<double, 3 + kNuclei>;
TissueChi draw_tissue_chi(uint64_t seed, int64_t volume);
// The literature values the proxy uses (docs/config.md cites each).
TissueChi literature_tissue_chi();

// The brain-shaped training volume (generate_volume calls it when the coin
// says brain). The returned volume's mask is the brain.
SynthVolume generate_brain_volume(const Recipe& r, uint64_t seed, int64_t volume);

// Thick slices along `axis` (0 = x, 1 = y, 2 = z) of an (n, n, n) volume:
// each slab of `factor` voxels is averaged (partial voxels weighted) and the
// slab centres are linearly interpolated back onto the grid, as a field
// acquired with slices `factor` times thicker and resampled by
// deepqsm-infer (trilinear) would look.
void thick_slices(float* v, int64_t n, int axis, double factor);

// ---- the in-vivo proxy
struct BrainProxy {
  int64_t n = 0;
  std::array<double, 3> voxel_mm{1, 1, 1};
  std::vector<float> chi, field;  // (n, n, n), ppm; field: D(0) = 0, B0 along z
  std::vector<uint8_t> mask;      // the brain
  std::vector<uint8_t> labels;    // deep nuclei, Nucleus
  BrainGeometry geometry;
};
constexpr int kProxyCases = 2;
// Case 1..kProxyCases on a 160^3 grid of 1 mm: the templates under the
// case's held-out geometry with literature chi, texture and veins (case 2
// also a 1.2 ppm haemorrhage and a stronger deformation); the field by the
// dipole model with D(0) = 0 on a grid zero-padded by n/2, no noise.
BrainProxy make_brain_proxy(int which, const std::string& templates_dir);
// The geometry of case `which` (keyed by kProxyPurpose).
BrainGeometry proxy_geometry(int which);

}  // namespace dq
