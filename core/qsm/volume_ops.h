// Volume geometry for inference: padding to the network's side multiple and
// cropping back, overlap tiling with a halo, trilinear resampling (to make
// B0 lie along z and voxels isotropic, and back), unit conversion to ppm and
// masking. Pure functions on (nz, ny, nx) fp32 arrays, x fastest, as
// everywhere (core/qsm/dipole.h); physical vectors are (x, y, z).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/qsm/dipole.h"

namespace dq {

// ------------------------------------------------------------- pad and crop

// Where an (nz, ny, nx) volume sits inside a larger zero-filled grid.
struct PadPlan {
  Dims3 in, out;
  int64_t off_z = 0, off_y = 0, off_x = 0;  // out index of in's voxel (0, 0, 0)
};

// The smallest grid whose sides are multiples of `multiple` and at least
// in + 2 * margin, with the volume centred (an odd surplus goes after it).
PadPlan pad_plan(const Dims3& in, int64_t multiple, int64_t margin = 0);
std::vector<float> pad_volume(const float* in, const PadPlan& plan);    // -> plan.out
std::vector<float> crop_volume(const float* out, const PadPlan& plan);  // -> plan.in

// ------------------------------------------------------------------ tiling

// One cube of a tiling: the network sees [start, start + size) per axis
// (zeros outside the volume) and its output is kept on the core
// [core_start, core_end).
struct Tile {
  std::array<int64_t, 3> start{}, size{}, core_start{}, core_end{};  // (z, y, x)
};

// Tiles of side `tile` whose cores, of side tile - 2 * halo, partition the
// volume, every tile inside the volume. Tile, halo and the volume's sides
// must be multiples of `multiple` (the network's side multiple: pad first),
// so every tile sits on the whole volume's pooling grid and a voxel whose
// receptive field fits in its tile gets the same value as in a whole-volume
// pass. An axis no longer than the tile gets one tile of the axis length.
std::vector<Tile> make_tiles(const Dims3& dims, int64_t tile, int64_t halo, int64_t multiple);

// Runs `net` (input (s_z, s_y, s_x) -> output of the same shape, x fastest)
// on every tile of `in` and assembles the cores into `out` (dims). `net` is
// called with the tile's dims and its input; it fills the output vector.
using VolumeFn = std::function<void(const Dims3&, const std::vector<float>&, std::vector<float>&)>;
void run_tiled(const float* in, const Dims3& dims, const std::vector<Tile>& tiles,
               const VolumeFn& net, float* out);

// ------------------------------------------------------------ resampling

using Mat3 = std::array<double, 9>;  // row-major 3x3

// The rotation (row-major) taking unit vector `b` onto +z (identity when b
// is along +-z, since the dipole kernel depends on (k . b)^2 only).
Mat3 rotation_to_z(const Vec3& b);
Mat3 transpose(const Mat3& m);
// Angle between b and the z axis, in degrees, folded to [0, 90] (b and -b
// give the same field).
double angle_to_z_deg(const Vec3& b);

// A grid centred on the origin: voxel (i, j, k) is at
// ((i - (nx - 1) / 2) * vx, (j - (ny - 1) / 2) * vy, (k - (nz - 1) / 2) * vz) mm.
struct Grid {
  Dims3 dims;
  Vec3 voxel_mm{1.0, 1.0, 1.0};
};

// out(p) = in(R p) for every out voxel position p (mm), by trilinear
// interpolation, 0 outside `in`. With R = rotation_to_z(b), an input whose
// B0 is b gives an output whose B0 is z; R's transpose maps it back.
std::vector<float> resample(const float* in, const Grid& in_grid, const Grid& out_grid,
                            const Mat3& R);

// The smallest isotropic grid (voxel `iso_mm`) whose points p, mapped by R
// as in resample(), cover the whole of `in`: the grid to resample `in` onto
// so that nothing is cut off.
// Fails, naming the voxel sizes, when a side would exceed kMaxResampledSide.
constexpr int64_t kMaxResampledSide = 2048;
Grid rotated_bounding_grid(const Grid& in, const Mat3& R, double iso_mm);

// ------------------------------------------------------------ units, masks

// Larmor frequency of 1H over B0: gamma / (2 pi) = 42.577478 MHz/T (CODATA 2018).
constexpr double kGammaBarHzPerT = 42.577478e6;

enum class FieldUnit { ppm, hz, rad };
FieldUnit field_unit_from_name(const std::string& name);  // "ppm" | "hz" | "rad"

// The factor f with field_ppm = f * field_in:
//   ppm: 1
//   Hz:  1e6 / (gamma/2pi * B0)                  (b0_tesla > 0)
//   rad: 1e6 / (2 pi * TE * gamma/2pi * B0)      (te_s > 0, b0_tesla > 0)
double to_ppm_factor(FieldUnit unit, double b0_tesla, double te_s);

// Zeros `data` where mask is 0 (mask and data share a grid).
void apply_mask(float* data, const uint8_t* mask, int64_t n);

// NaN or infinite values among v[0 .. n), counting only where mask (nullable) is non-zero.
int64_t count_non_finite(const float* v, size_t n, const uint8_t* mask = nullptr);

// Fails, in words, when a result to be written holds NaN or infinite voxels
// (parameters that overflow float): never a file of NaN with exit status 0.
void require_finite_result(const std::vector<float>& v, const std::string& what);

// A field map's missing and broken voxels, the same way for deepqsm-infer
// and deepqsm invert: NaN voxels leave the mask (counted, so the command can
// warn), an infinite voxel inside the mask is refused naming `path` (a
// broken map, not missing data; outside the mask it is dropped like any
// other value), and every voxel outside the mask is set to 0. Fails when no
// voxel is left inside. mask: one byte per voxel, 1 inside.
struct MaskedField {
  int64_t nan = 0;     // NaN voxels, now outside the mask
  int64_t inside = 0;  // voxels inside the mask afterwards
};
MaskedField mask_field(std::vector<float>& field, std::vector<uint8_t>& mask,
                       const std::string& path);

// The standard deviation (same unit as the field) of white noise on a field
// map, from the field alone: the median absolute value of the discrete
// Laplacian 6 f - (sum of the 6 neighbours), over voxels whose neighbours
// are all inside the mask (mask nullable: all voxels), divided by
// 0.6745 sqrt(42), which is sigma for pure white noise. A dipole field's
// Laplacian is -(1/3) lap(chi) + d2(chi)/dz2, zero wherever chi is locally
// constant or linear, so the tissue's own contribution is confined to edges
// and the median ignores it. Returns 0 when fewer than 1000 voxels qualify.
double estimate_noise_std(const float* field, const uint8_t* mask, const Dims3& dims);

}  // namespace dq
