// The GPU generator, twin of synth/synth.h: the same shapes (drawn on the
// host by draw_shapes), rasterised in one kernel over all shapes by the
// rule stated at shape_contains, so chi equals the CPU volume bit for bit;
// the field through cuFFT (cuda/qsm/dipole_gpu.h), equal to the CPU field to
// fp32 rounding (1e-5 relative); noise, region and patch corners from the
// same counters as the CPU (noise through device log/cos, so equal to
// rounding; the region by region_contains's fp32 rule, so exactly).
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/memory.h"
#include "cuda/qsm/dipole_gpu.h"
#include "synth/synth.h"

namespace dq {

// Paints `shapes` in order into the device volume chi (n, n, n), n =
// r.volume_size, exactly as rasterise() does on the host (one thread per
// voxel, every shape tested). Voxels no shape covers are left untouched.
// Asynchronous on `s`; `scratch` holds the shape table and must stay alive
// until the kernel has run (it is resized as needed).
void rasterise_gpu(const Recipe& r, const std::vector<SynthShape>& shapes, float* chi,
                   DeviceBuffer& scratch, cudaStream_t s);
// Bytes of the device shape table for `shapes` shapes: GpuSynth sizes its
// scratch for the recipe's most once, so no cudaMalloc (which synchronises
// the device) happens in the producer thread while training runs.
size_t shape_table_bytes(size_t shapes);

// One volume at a time on one stream: chi, field, the forward model's plans
// and the patch staging buffers, allocated once.
class GpuSynth {
 public:
  // Validates the recipe; `stream` may be the default stream (nullptr).
  GpuSynth(const Recipe& r, cudaStream_t stream);

  // Generates volume `volume` into chi() and field() (asynchronous) and
  // returns its B0 direction.
  Vec3 generate(uint64_t seed, int64_t volume);
  // Cuts `count` patches (draw_patch_corner's corners) of the volume last
  // generated, which must be `volume`, into device buffers (count, P, P, P).
  void cut_patches(uint64_t seed, int64_t volume, int count, float* field_out, float* chi_out);
  // The same into host memory; returns when the copies are done.
  void cut_patches_to_host(uint64_t seed, int64_t volume, int count, float* field_out,
                           float* chi_out);
  // The whole volume (n, n, n) into host memory; returns when done.
  void download(float* chi_out, float* field_out);

  const float* chi() const { return static_cast<const float*>(chi_.data()); }
  const float* field() const { return static_cast<const float*>(field_.data()); }
  cudaStream_t stream() const { return stream_; }

 private:
  Recipe r_;
  cudaStream_t stream_;
  DeviceBuffer chi_, field_, shapes_, corners_, patch_field_, patch_chi_;
  std::unique_ptr<CudaDipole> dipole_;
  int64_t current_ = -1;  // volume index in chi_/field_
  uint64_t current_seed_ = 0;
};

// generate_patches on the GPU: the same PatchSet, field to fp32 rounding.
PatchSet generate_patches_gpu(const Recipe& r, uint64_t seed, int64_t first_volume,
                              int64_t n_volumes);

}  // namespace dq
