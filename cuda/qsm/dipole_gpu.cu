// cuFFT forward model; see cuda/qsm/dipole_gpu.h. The arithmetic mirrors
// core/qsm/dipole.cpp step for step (kernel in double, spectrum times kernel,
// C2R, then the 1/N scale in fp32) so the two agree to fp32 rounding.
#include <cmath>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/qsm/dipole_gpu.h"

namespace dq {

namespace {

// One thread per half-spectrum bin, by the formula the CPU uses (dipole_bin).
__global__ void dipole_kernel_k(DipoleSpec spec, int64_t nxh, float* out) {
  const int64_t total = spec.nz * spec.ny * nxh;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = idx % nxh, y = idx / nxh % spec.ny, z = idx / (nxh * spec.ny);
    out[idx] = dipole_bin(spec, z, y, x);
  }
}

// buf (padded grid) = 0 outside, chi inside; one thread per padded voxel.
__global__ void pad_k(const float* chi, int64_t nz, int64_t ny, int64_t nx, int64_t pad,
                      float* buf) {
  const int64_t gz = nz + 2 * pad, gy = ny + 2 * pad, gx = nx + 2 * pad, total = gz * gy * gx;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = idx % gx - pad, y = idx / gx % gy - pad, z = idx / (gx * gy) - pad;
    const bool inside = x >= 0 && x < nx && y >= 0 && y < ny && z >= 0 && z < nz;
    buf[idx] = inside ? chi[(z * ny + y) * nx + x] : 0.0f;
  }
}

__global__ void filter_k(cufftComplex* s, const float* d, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    s[i].x = __fmul_rn(s[i].x, d[i]);
    s[i].y = __fmul_rn(s[i].y, d[i]);
  }
}

// field = crop(buf) * scale; one thread per output voxel.
__global__ void crop_k(const float* buf, int64_t nz, int64_t ny, int64_t nx, int64_t pad,
                       float scale, float* field) {
  const int64_t gy = ny + 2 * pad, gx = nx + 2 * pad, total = nz * ny * nx;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = idx % nx, y = idx / nx % ny, z = idx / (nx * ny);
    field[idx] = __fmul_rn(buf[((z + pad) * gy + (y + pad)) * gx + (x + pad)], scale);
  }
}

}  // namespace

void cuda_dipole_kernel(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                        double k0_value, float* out, cudaStream_t s) {
  const DipoleSpec spec = dipole_spec(dims, voxel_mm, b0_dir, k0_value);
  const int64_t nxh = dims.nx / 2 + 1;
  DQ_LAUNCH(dipole_kernel_k, detail::grid_for(dims.nz * dims.ny * nxh), detail::kThreads, 0, s)
  (spec, nxh, out);
  DQ_CUDA(cudaGetLastError());
}

CudaDipole::CudaDipole(const Dims3& dims, int64_t pad, cudaStream_t stream)
    : dims_(dims), grid_(dims.padded(pad)), pad_(pad), stream_(stream) {
  if (pad < 0) fail("dipole padding must be >= 0, got ", pad);
  DQ_CHECK(dims.nz > 0 && dims.ny > 0 && dims.nx > 0, "empty FFT grid");
  // cuFFT takes int sizes, as FFTW does on the CPU side.
  DQ_CHECK(grid_.numel() < (int64_t{1} << 31), "FFT grid too large");
  real_ = DeviceBuffer(sizeof(float) * static_cast<size_t>(grid_.numel()));
  spectrum_ = DeviceBuffer(sizeof(cufftComplex) * static_cast<size_t>(grid_.half_numel()));
  kernel_ = DeviceBuffer(sizeof(float) * static_cast<size_t>(grid_.half_numel()));
  const int nz = static_cast<int>(grid_.nz), ny = static_cast<int>(grid_.ny),
            nx = static_cast<int>(grid_.nx);
  // A constructor that throws does not run the destructor, so plans made
  // before a failure are released here.
  try {
    DQ_CUFFT(cufftPlan3d(&r2c_, nz, ny, nx, CUFFT_R2C));
    have_r2c_ = true;
    DQ_CUFFT(cufftPlan3d(&c2r_, nz, ny, nx, CUFFT_C2R));
    have_c2r_ = true;
    DQ_CUFFT(cufftSetStream(r2c_, stream_));
    DQ_CUFFT(cufftSetStream(c2r_, stream_));
  } catch (...) {
    if (have_r2c_) cufftDestroy(r2c_);
    if (have_c2r_) cufftDestroy(c2r_);
    throw;
  }
}

CudaDipole::~CudaDipole() {
  // Destroying a plan fails only after an earlier sticky error, reported where it happened.
  if (have_r2c_) cufftDestroy(r2c_);
  if (have_c2r_) cufftDestroy(c2r_);
}

void CudaDipole::set_kernel(const Vec3& voxel_mm, const Vec3& b0_dir, double k0_value) {
  if (have_kernel_ && voxel_mm == voxel_ && b0_dir == b0_ && k0_value == k0_) return;
  cuda_dipole_kernel(grid_, voxel_mm, b0_dir, k0_value, static_cast<float*>(kernel_.data()),
                     stream_);
  voxel_ = voxel_mm;
  b0_ = b0_dir;
  k0_ = k0_value;
  have_kernel_ = true;
}

void CudaDipole::forward(const float* chi, float* field) {
  DQ_CHECK(have_kernel_, "CudaDipole::forward before set_kernel");
  auto* buf = static_cast<float*>(real_.data());
  auto* spec = static_cast<cufftComplex*>(spectrum_.data());
  DQ_LAUNCH(pad_k, detail::grid_for(grid_.numel()), detail::kThreads, 0, stream_)
  (chi, dims_.nz, dims_.ny, dims_.nx, pad_, buf);
  DQ_CUDA(cudaGetLastError());
  DQ_CUFFT(cufftExecR2C(r2c_, buf, spec));
  DQ_LAUNCH(filter_k, detail::grid_for(grid_.half_numel()), detail::kThreads, 0, stream_)
  (spec, kernel(), grid_.half_numel());
  DQ_CUDA(cudaGetLastError());
  DQ_CUFFT(cufftExecC2R(c2r_, spec, buf));
  const float scale = 1.0f / static_cast<float>(grid_.numel());
  DQ_LAUNCH(crop_k, detail::grid_for(dims_.numel()), detail::kThreads, 0, stream_)
  (buf, dims_.nz, dims_.ny, dims_.nx, pad_, scale, field);
  DQ_CUDA(cudaGetLastError());
}

void cuda_forward_field(const float* chi_host, const Dims3& dims, const Vec3& voxel_mm,
                        const Vec3& b0_dir, double k0_value, int64_t pad, float* field_host) {
  const size_t bytes = sizeof(float) * static_cast<size_t>(dims.numel());
  DeviceBuffer chi(bytes), field(bytes);
  CudaDipole fwd(dims, pad, nullptr);
  fwd.set_kernel(voxel_mm, b0_dir, k0_value);
  DQ_CUDA(cudaMemcpy(chi.data(), chi_host, bytes, cudaMemcpyHostToDevice));
  fwd.forward(static_cast<const float*>(chi.data()), static_cast<float*>(field.data()));
  DQ_CUDA(cudaMemcpy(field_host, field.data(), bytes, cudaMemcpyDeviceToHost));
}

}  // namespace dq
