// The patch file `deepqsm synth` writes (HDF5, readable with h5py), filled
// one volume at a time so it may be far larger than memory. Layout, N =
// volumes * patches_per_volume, P = patch_size, patches volume-major:
//
//   /field    float32 (N, P, P, P)   local field, ppm; (z, y, x), x fastest
//   /chi      float32 (N, P, P, P)   susceptibility, ppm; patch i of field is
//                                    the dipole field (cropped) around patch i of chi
//   /volume   int64   (N,)           the patch's volume index (its seed counter)
//   /corner   int64   (N, 3)         the patch's corner (z, y, x) in its volume, voxels
//   /b0_dir   float64 (N, 3)         the volume's unit B0 direction (x, y, z)
//   root attributes:
//     recipe             string   the generator recipe as JSON (every key)
//     voxel_mm           float64 (3,)  voxel size (x, y, z), mm
//     b0_dir             float64 (3,)  the recipe's B0 direction (x, y, z)
//     seed               uint64   the data seed
//     volume_size, patch_size, patches_per_volume   int64
//     units              string   "ppm"
//
// The file is written under temporary_name(path) and renamed when close()
// succeeds (or when the command's OutputGroup commits), so an error, Ctrl-C
// or the process crashing never leaves a half-written file under the real
// name (core/io/output_files.h).
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "core/io/output_files.h"
#include "synth/recipe.h"

namespace dq {

class PatchFileWriter {
 public:
  PatchFileWriter(const std::string& path, const Recipe& r, uint64_t seed, int64_t volumes);
  ~PatchFileWriter();  // the temporary file is removed unless close() succeeded
  PatchFileWriter(const PatchFileWriter&) = delete;
  PatchFileWriter& operator=(const PatchFileWriter&) = delete;

  // Writes the patches_per_volume patches of the next volume: field and chi
  // (ppv, P, P, P), their corners (ppv of (z, y, x)) and the volume's B0.
  void write_volume(int64_t volume, const float* field, const float* chi,
                    const std::array<int64_t, 3>* corners, const std::array<double, 3>& b0);
  // Checks every volume was written, closes and renames into place.
  void close();

 private:
  struct Ids;
  std::string path_;
  PendingFile out_;
  Recipe r_;
  int64_t volumes_ = 0, written_ = 0;
  Ids* ids_ = nullptr;
};

}  // namespace dq
