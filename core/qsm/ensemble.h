// Inference ensembles from the invariances of the dipole kernel
// D(k) = 1/3 - (k.b)^2/|k|^2 with b along z:
//
// Scale. D depends on the direction of k only, not on |k|, so the field
// averaged onto a grid of twice the voxel size is (up to the aliasing of the
// averaging) the field of chi averaged the same way: the inversion looks the
// same at every scale. A U-Net sees a fixed number of voxels around each
// output voxel (its receptive field, and during training its patch), which
// is too few for structures as large as white matter or the brain's low
// spatial frequencies. Run on the coarser field it reaches twice as far in
// mm, so the low frequencies come from the coarse pass and the edges and
// fine detail from the full-resolution pass.
//
// Mirror. D is unchanged by k_x -> -k_x, k_y -> -k_y and k_z -> -k_z, so
// mirroring the field along any axis mirrors chi. A trained network is only
// approximately equivariant; averaging its mirrored passes (test-time
// augmentation) cancels part of its error.
//
// Pure functions on (nz, ny, nx) fp32 arrays, x fastest, as in
// core/qsm/volume_ops.h.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/qsm/dipole.h"

namespace dq {

// The grid of ceil(n / factor) voxels per axis.
Dims3 coarse_dims(const Dims3& fine, int64_t factor);

// Mean over factor^3 blocks (zeros beyond the volume's edge), -> coarse_dims.
std::vector<float> downsample_mean(const float* in, const Dims3& fine, int64_t factor);

// Trilinear interpolation from a coarse grid back to `fine` (the block
// layout of downsample_mean: fine voxel i sits at coarse coordinate
// (i + 0.5) / factor - 0.5), clamped at the edges.
std::vector<float> upsample_linear(const float* coarse, const Dims3& coarse_d, int64_t factor,
                                   const Dims3& fine);

// In-place Gaussian blur with standard deviation sigma (voxels), separable,
// truncated at 3 sigma and renormalised at the volume's edges. sigma <= 0:
// unchanged.
void gaussian_blur(float* v, const Dims3& d, double sigma);

// fine + G_sigma * (coarse_up - fine): the low frequencies (below about
// 1 / (2 pi sigma) cycles per voxel) of coarse_up, the rest of fine.
std::vector<float> blend_scales(const float* fine, const float* coarse_up, const Dims3& d,
                                double sigma);

// A map field -> chi on any grid (the network, padded and tiled as needed).
using PredictFn = std::function<std::vector<float>(const std::vector<float>&, const Dims3&)>;

// chi from `scales` passes of `predict`: on the field, on its 2x2x2 block
// mean, on that one's, ...; coarse to fine, each pass's result blended with
// the upsampled coarser one at `sigma` voxels of its own grid (the kernel is
// the same at every level because the physics is). scales 1 is one plain pass.
std::vector<float> predict_multiscale(const std::vector<float>& field, const Dims3& d, int scales,
                                      double sigma, const PredictFn& predict);

// The volume mirrored along x (axes bit 1), y (bit 2) and z (bit 4); its own inverse.
std::vector<float> flip_volume(const std::vector<float>& in, const Dims3& d, int axes);

// The mean of `flips` passes of `predict`, each on the field mirrored by
// axes 0, 1, 2, ..., flips - 1 (in that order: none, x, y, xy, z, xz, yz,
// xyz) and mirrored back. flips is 1, 2, 4 or 8; 1 is one plain pass.
std::vector<float> predict_mirrored(const std::vector<float>& field, const Dims3& d, int flips,
                                    const PredictFn& predict);

}  // namespace dq
