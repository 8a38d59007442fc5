#include "core/dipole.h"

#include <fftw3.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"

namespace dq {

std::mutex& fftw_planner_mutex() {
  static std::mutex m;
  return m;
}

int fft_threads() {
  return cpu_threads();
}

Fft3::Fft3(const Dims3& dims, int threads) : dims_(dims), threads_(threads > 1 ? threads : 1) {
  DQ_CHECK(dims.nz > 0 && dims.ny > 0 && dims.nx > 0, "empty FFT grid");
  // FFTW takes int sizes; a 1290^3 grid would overflow, far beyond any volume here.
  DQ_CHECK(dims.numel() < (int64_t{1} << 31), "FFT grid too large");
  real_ = static_cast<float*>(fftwf_malloc(sizeof(float) * static_cast<size_t>(dims.numel())));
  spectrum_ = static_cast<std::complex<float>*>(
      fftwf_malloc(sizeof(fftwf_complex) * static_cast<size_t>(dims.half_numel())));
  if (!real_ || !spectrum_) {
    fftwf_free(real_);
    fftwf_free(spectrum_);
    fail("out of host memory for a ", dims.nz, "x", dims.ny, "x", dims.nx, " FFT");
  }
  const int nz = static_cast<int>(dims.nz), ny = static_cast<int>(dims.ny),
            nx = static_cast<int>(dims.nx);
  auto* spec = reinterpret_cast<fftwf_complex*>(spectrum_);
  std::lock_guard<std::mutex> lock(fftw_planner_mutex());
#ifdef DEEPQSM_FFTW_THREADS
  // The thread count is planner state: set it for these two plans only, under
  // the planner lock, and put it back so other plans stay single-threaded.
  static const bool threads_ok = fftwf_init_threads() != 0;
  if (threads_ok) fftwf_plan_with_nthreads(threads > 1 ? threads : 1);
#else
  (void)threads;
#endif
  // FFTW_ESTIMATE does not touch the buffers while planning, so no data is
  // lost and planning costs no transforms.
  fftwf_plan r2c = fftwf_plan_dft_r2c_3d(nz, ny, nx, real_, spec, FFTW_ESTIMATE);
  fftwf_plan c2r = fftwf_plan_dft_c2r_3d(nz, ny, nx, spec, real_, FFTW_ESTIMATE);
#ifdef DEEPQSM_FFTW_THREADS
  if (threads_ok) fftwf_plan_with_nthreads(1);
#endif
  if (!r2c || !c2r) {  // the destructor will not run: release everything here
    if (r2c) fftwf_destroy_plan(r2c);
    if (c2r) fftwf_destroy_plan(c2r);
    fftwf_free(real_);
    fftwf_free(spectrum_);
    fail("FFTW could not plan a ", nz, "x", ny, "x", nx, " transform");
  }
  plan_r2c_ = r2c;
  plan_c2r_ = c2r;
}

Fft3::~Fft3() {
  {
    std::lock_guard<std::mutex> lock(fftw_planner_mutex());
    if (plan_r2c_) fftwf_destroy_plan(static_cast<fftwf_plan>(plan_r2c_));
    if (plan_c2r_) fftwf_destroy_plan(static_cast<fftwf_plan>(plan_c2r_));
  }
  fftwf_free(real_);
  fftwf_free(spectrum_);
}

void Fft3::forward() {
  fftwf_execute(static_cast<fftwf_plan>(plan_r2c_));
}

void Fft3::inverse() {
  fftwf_execute(static_cast<fftwf_plan>(plan_c2r_));
  const float scale = 1.0f / static_cast<float>(dims_.numel());
  const int64_t n = dims_.numel();
  for (int64_t i = 0; i < n; ++i) real_[i] *= scale;
}

namespace {

// The kernel on (nz, ny, x_count) where x bin i has fftfreq_index(i, nx):
// x_count = nx gives the full grid, nx/2 + 1 the R2C half spectrum. For even
// nx the half spectrum's last bin is the Nyquist bin, which fftfreq labels
// -nx/2; using that label keeps both grids identical where they overlap.
std::vector<float> kernel_on(const Dims3& dims, int64_t x_count, const Vec3& voxel_mm,
                             const Vec3& b0_dir, double k0_value) {
  const DipoleSpec spec = dipole_spec(dims, voxel_mm, b0_dir, k0_value);
  std::vector<float> d(static_cast<size_t>(dims.nz * dims.ny * x_count));
  size_t at = 0;
  for (int64_t z = 0; z < dims.nz; ++z)
    for (int64_t y = 0; y < dims.ny; ++y)
      for (int64_t x = 0; x < x_count; ++x) d[at++] = dipole_bin(spec, z, y, x);
  return d;
}

}  // namespace

DipoleSpec dipole_spec(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                       double k0_value) {
  DQ_CHECK(dims.nz > 0 && dims.ny > 0 && dims.nx > 0, "empty dipole kernel grid");
  for (double v : voxel_mm)
    if (!(v > 0.0) || !std::isfinite(v)) fail("voxel size must be positive, got ", v, " mm");
  if (!std::isfinite(k0_value)) fail("D(0), the dipole kernel at k = 0, must be finite");
  const double bn =
      std::sqrt(b0_dir[0] * b0_dir[0] + b0_dir[1] * b0_dir[1] + b0_dir[2] * b0_dir[2]);
  if (!(bn > 0.0) || !std::isfinite(bn)) fail("the B0 direction must be a finite, non-zero vector");
  DipoleSpec spec{dims.nz,     dims.ny, dims.nx, voxel_mm[0], voxel_mm[1],
                  voxel_mm[2], 0,       0,       0,           k0_value};
  spec.bx = b0_dir[0] / bn;
  spec.by = b0_dir[1] / bn;
  spec.bz = b0_dir[2] / bn;
  return spec;
}

std::vector<float> dipole_kernel(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                                 double k0_value) {
  return kernel_on(dims, dims.nx / 2 + 1, voxel_mm, b0_dir, k0_value);
}

std::vector<float> dipole_kernel_full(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                                      double k0_value) {
  return kernel_on(dims, dims.nx, voxel_mm, b0_dir, k0_value);
}

void apply_kspace_filter(Fft3& fft, const std::vector<float>& half_filter, const float* in,
                         const Dims3& dims, int64_t pad, float* out) {
  DQ_CHECK(pad >= 0, "negative padding ", pad);
  const Dims3 g = dims.padded(pad);
  DQ_CHECK(fft.dims() == g, "FFT planned for another grid");
  DQ_CHECK(static_cast<int64_t>(half_filter.size()) == g.half_numel(),
           "k-space filter does not match the padded grid");

  // With a threaded FFT the copies and the product are threaded too, over
  // planes and bins (core/parallel.h); one-thread transforms (the generators'
  // workers) keep them on their own thread.
  float* buf = fft.real();
  const size_t row = sizeof(float) * static_cast<size_t>(dims.nx);
  const int64_t plane = g.ny * g.nx;
  const int64_t plane_grain = std::max<int64_t>(1, kPointwiseGrain / plane);
  const auto each = [&fft](int64_t n, int64_t grain, const auto& f) {
    if (fft.threads() > 1)
      parallel_for(n, grain, f);
    else
      f(int64_t{0}, n);
  };
  if (pad > 0)
    each(g.nz, plane_grain, [&](int64_t z0, int64_t z1) {
      std::memset(buf + z0 * plane, 0, sizeof(float) * static_cast<size_t>((z1 - z0) * plane));
    });
  each(dims.nz, plane_grain, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z)
      for (int64_t y = 0; y < dims.ny; ++y)
        std::memcpy(buf + ((z + pad) * g.ny + (y + pad)) * g.nx + pad,
                    in + (z * dims.ny + y) * dims.nx, row);
  });

  fft.forward();
  std::complex<float>* s = fft.spectrum();
  each(g.half_numel(), kPointwiseGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) s[i] *= half_filter[static_cast<size_t>(i)];
  });
  fft.inverse();

  each(dims.nz, plane_grain, [&](int64_t z0, int64_t z1) {
    for (int64_t z = z0; z < z1; ++z)
      for (int64_t y = 0; y < dims.ny; ++y)
        std::memcpy(out + (z * dims.ny + y) * dims.nx,
                    buf + ((z + pad) * g.ny + (y + pad)) * g.nx + pad, row);
  });
}

void forward_field(const float* chi, const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                   double k0_value, int64_t pad, float* field) {
  if (pad < 0) fail("dipole padding must be >= 0, got ", pad);
  const Dims3 g = dims.padded(pad);
  Fft3 fft(g);
  apply_kspace_filter(fft, dipole_kernel(g, voxel_mm, b0_dir, k0_value), chi, dims, pad, field);
}

Dims3 volume_dims(const Tensor& t, const char* what) {
  const Shape& s = t.shape();
  if (t.dtype() != DType::f32 || t.device() != Device::cpu)
    fail(what, " must be a host fp32 tensor");
  if (s.rank() == 3) return {s[0], s[1], s[2]};
  if (s.rank() == 5 && s[0] == 1 && s[4] == 1) return {s[1], s[2], s[3]};
  fail(what, " must be shaped (D, H, W) or (1, D, H, W, 1), got ", s.str());
}

Tensor forward_field(const Tensor& chi, const Vec3& voxel_mm, const Vec3& b0_dir, double k0_value,
                     int64_t pad) {
  const Dims3 dims = volume_dims(chi, "chi");
  Tensor field = Tensor::zeros(chi.shape());
  forward_field(chi.f32(), dims, voxel_mm, b0_dir, k0_value, pad, field.f32());
  return field;
}

}  // namespace dq
