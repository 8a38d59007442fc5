// A head-like susceptibility phantom for demos and tests when no measured
// data is at hand: ellipsoids for the brain, white matter, ventricles, deep
// grey nuclei and large veins, with literature chi values (ppm, relative to
// CSF; see phantom.cpp), and its local field by the dipole forward model
// (B0 along z).
#pragma once
#include <cstdint>
#include <vector>

#include "core/qsm/dipole.h"

namespace dq {

struct Phantom {
  Dims3 dims;                 // n^3
  Vec3 voxel_mm{1, 1, 1};     // 160 / n mm isotropic: the field of view is always 160 mm
  std::vector<float> chi;     // (nz, ny, nx), ppm
  std::vector<float> field;   // (nz, ny, nx), ppm of B0, B0 along z
  std::vector<uint8_t> mask;  // the brain (1) versus the background (0)
};

// Builds the phantom on an n^3 grid (n >= 16). The field is forward_field
// with D(0) = 0 (a compact source in infinite space, as a background-removed
// local field is) on a grid zero-padded by n/2 per side against wrap-around.
// A non-zero detail_seed adds in-vivo-like structure at the scale of a few
// voxels, drawn from that seed: a folded white-matter surface, sulci, a
// smooth tissue texture and 80 small veins in every direction (phantom.cpp).
// The ellipsoids alone have none of it, and a network trained on large
// shapes can look good on them and still fail on a brain.
Phantom make_head_phantom(int64_t n = 160, uint64_t detail_seed = 0);

}  // namespace dq
