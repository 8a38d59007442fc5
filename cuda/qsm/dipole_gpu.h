// The QSM forward model on the GPU, the twin of core/qsm/dipole.h: the dipole
// kernel D(k) = 1/3 - (k . b)^2 / |k|^2 computed on the device for the R2C
// half spectrum, and field = crop(IFFT(D . FFT(zero_pad(chi)))) with cuFFT
// R2C / C2R. Same grids, conventions and D(0) choice as the CPU version
// (core/qsm/dipole.h); tests/gpu/test_synth_gpu.cpp holds the two to 1e-5
// relative.
#pragma once
#include <cuda_runtime.h>
#include <cufft.h>

#include <cstdint>

#include "core/qsm/dipole.h"
#include "cuda/memory.h"

namespace dq {

// Writes the dipole kernel of `dims` on its half-spectrum grid
// (nz, ny, nx/2 + 1) to device memory `out`, asynchronously on `s`. Same
// values as dipole_kernel() (computed in double, rounded to fp32).
void cuda_dipole_kernel(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                        double k0_value, float* out, cudaStream_t s);

// cuFFT plans and work buffers for one (padded) grid, bound to one stream.
// Building one is the slow part (plans, allocations); build it once and call
// forward() per volume.
class CudaDipole {
 public:
  CudaDipole(const Dims3& dims, int64_t pad, cudaStream_t stream);
  ~CudaDipole();
  CudaDipole(const CudaDipole&) = delete;
  CudaDipole& operator=(const CudaDipole&) = delete;

  // Sets the kernel used by forward(); recomputed on the device only when
  // the arguments change (a B0 cone changes them every volume, cheaply).
  void set_kernel(const Vec3& voxel_mm, const Vec3& b0_dir, double k0_value);
  // field = crop(IFFT(D . FFT(zero_pad(chi, pad)))) on device buffers
  // (nz, ny, nx); chi and field may alias. Asynchronous on the stream.
  void forward(const float* chi, float* field);

  const Dims3& dims() const { return dims_; }
  const float* kernel() const { return static_cast<const float*>(kernel_.data()); }  // half grid
  cudaStream_t stream() const { return stream_; }

 private:
  Dims3 dims_, grid_;  // volume and padded FFT grid
  int64_t pad_ = 0;
  cudaStream_t stream_ = nullptr;
  cufftHandle r2c_ = 0, c2r_ = 0;
  bool have_r2c_ = false, have_c2r_ = false;
  DeviceBuffer real_, spectrum_, kernel_;
  bool have_kernel_ = false;
  Vec3 voxel_{0, 0, 0}, b0_{0, 0, 0};
  double k0_ = 0;
};

// Host convenience for tests: field of a host chi volume through the GPU.
void cuda_forward_field(const float* chi_host, const Dims3& dims, const Vec3& voxel_mm,
                        const Vec3& b0_dir, double k0_value, int64_t pad, float* field_host);

}  // namespace dq
