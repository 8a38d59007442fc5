// NIfTI-1/-2 volumes in and out (nifti_clib), as fp32 in our memory order.
//
// NIfTI stores x fastest, then y, then z, which is exactly our (D, H, W) =
// (z, y, x) row-major order, so `data` is used as is: voxel (x, y, z) is
// data[(z * ny + y) * nx + x]. Physical vectors (voxel size, B0 direction)
// are (x, y, z) as everywhere in the project.
//
// Reading accepts .nii and .nii.gz, any real numeric datatype (int8 ..
// float64), applies scl_slope / scl_inter when the slope is non-zero, and
// refuses 4D or higher files (dim[4..7] > 1) and complex/RGB data. Every
// failure is a dq::Error whose one-line message names the file.
//
// nifti_clib's types stay out of this header: the original header travels
// in an opaque pointer, so writing a result "like" an input keeps its
// affine (qform and sform), codes, units, description and intent.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dims.h"

namespace dq {

struct NiftiHeader;  // the nifti_image the volume came from (defined in nifti_io.cpp)

struct Volume {
  std::vector<float> data;  // (nz, ny, nx), x fastest, scaling applied
  int64_t nx = 0, ny = 0, nz = 0;
  Vec3 voxel_mm{1.0, 1.0, 1.0};  // (x, y, z) voxel size; pixdim converted to mm
  // Orientation as stored (for tests and reports); 0 codes mean "not set".
  int qform_code = 0, sform_code = 0;
  std::array<double, 16> qform{};             // qto_xyz, row-major 4x4, voxel index -> mm
  std::array<double, 16> sform{};             // sto_xyz, row-major 4x4
  int datatype = 0;                           // NIFTI_TYPE_* of the file on disk (16 = float32)
  std::shared_ptr<const NiftiHeader> header;  // null for volumes not read from a file

  Dims3 dims() const { return {nz, ny, nx}; }
  int64_t numel() const { return nx * ny * nz; }
};

// Reads a 3D volume (a 4D file whose dims 4..7 are all 1 counts as 3D).
Volume read_nifti(const std::string& path);

// Writes `data` ((like.nz, like.ny, like.nx), fp32) with like's header:
// same grid, voxel size and affine, datatype float32, scl_slope 1 /
// scl_inter 0, cal_min/max reset. Written to a temporary (temporary_name) and renamed,
// so a crash never leaves a half-written file under the real name. The
// extension (.nii or .nii.gz) picks the format; like.header may be null, in
// which case this is write_nifti_new with like's grid and voxel size.
void write_nifti(const std::string& path, const Volume& like, const float* data);

// Writes a generated volume (phantom, synthetic data): float32, the given
// voxel size, qform = sform = scaling by voxel size centred on the grid
// (scanner-anatomical codes), units mm.
void write_nifti_new(const std::string& path, const float* data, int64_t nx, int64_t ny, int64_t nz,
                     const Vec3& voxel_mm);

// "" when b's voxel size matches a's within 1 % per axis, else a warning to
// print: "<b_what> has 2 x 2 x 2 mm voxels, <a_what> 1 x 1 x 1 mm: ...".
// Same dimensions with other voxels usually means a file from another scan.
// The same voxels with another affine (sform, else qform; shifted or
// flipped by more than 0.01 mm) also gets a warning: the two are still
// combined voxel by voxel, as stored, and the warning says so.
std::string voxel_size_mismatch(const Volume& a, const std::string& a_what, const Volume& b,
                                const std::string& b_what);

// A field map must be a volume: fails (naming `path`) for a grid flat in
// two or more axes (1x1x1, a line), where the dipole inversion has nothing
// to invert; returns a warning for a grid flat in one axis (a 2-D image,
// read as a 3-D volume one voxel thick, which the inversion can barely
// use), and "" otherwise.
std::string field_grid_warning(const Volume& v, const std::string& path);

// Checks, before any work, that an output file (NIfTI, PNG, HDF5) can be
// written at `path`: its folder exists, no directory sits at the path, and
// it is none of `others` (the command's inputs and its other outputs: the
// same file twice would overwrite one with the other). Fails in one line
// naming `what` ("-o", "--preview"). Commands call it for every output up
// front, so a typo costs no computation and leaves nothing half-written.
void check_output_file(const std::string& path, const std::string& what,
                       const std::vector<std::string>& others = {});
// check_output_file, and the name ends in .nii or .nii.gz.
void check_nifti_output(const std::string& path, const std::string& what,
                        const std::vector<std::string>& others = {});

}  // namespace dq
