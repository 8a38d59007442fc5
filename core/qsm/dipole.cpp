#include "core/qsm/dipole.h"

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

namespace {

// FFTW's threads library must be initialised before any other FFTW call; each
// user of FFTW here (Fft3, PaddedFilter) calls this first, and the first call
// initialises it (a function-local static: once, other callers waiting).
bool fftw_threads_ready() {
#ifdef DEEPQSM_FFTW_THREADS
  static const bool ok = fftwf_init_threads() != 0;
  return ok;
#else
  return false;
#endif
}

}  // namespace

Fft3::Fft3(const Dims3& dims, int threads) : dims_(dims), threads_(threads > 1 ? threads : 1) {
  const bool threads_ok = fftw_threads_ready();
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
  if (threads_ok) fftwf_plan_with_nthreads(threads > 1 ? threads : 1);
#else
  (void)threads;
  (void)threads_ok;
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

namespace {

// Columns of the z pass transformed together: 32 complex columns of a
// 224-deep grid are 56 KiB, in L2 beside the filter's rows.
constexpr int64_t kColumnBlock = 32;

// An fftwf_malloc'd buffer freed on scope exit.
template <class T>
struct FftwBuffer {
  T* p;
  explicit FftwBuffer(int64_t n)
      : p(static_cast<T*>(fftwf_malloc(sizeof(T) * static_cast<size_t>(n)))) {
    if (!p) fail("out of host memory for an FFT buffer of ", n, " values");
  }
  ~FftwBuffer() { fftwf_free(p); }
  FftwBuffer(const FftwBuffer&) = delete;
  FftwBuffer& operator=(const FftwBuffer&) = delete;
};

fftwf_complex* as_fftw(std::complex<float>* p) {
  return reinterpret_cast<fftwf_complex*>(p);
}

}  // namespace

PaddedFilter::PaddedFilter(const Dims3& dims, int64_t pad, const std::vector<float>& half_filter,
                           bool threaded)
    : dims_(dims), grid_(dims.padded(pad)), pad_(pad), threaded_(threaded) {
  fftw_threads_ready();  // its plans are single-threaded; apply() threads them
  DQ_CHECK(dims.nz > 0 && dims.ny > 0 && dims.nx > 0, "empty FFT grid");
  DQ_CHECK(pad >= 0, "negative padding ", pad);
  DQ_CHECK(grid_.numel() < (int64_t{1} << 31), "FFT grid too large");
  DQ_CHECK(static_cast<int64_t>(half_filter.size()) == grid_.half_numel(),
           "k-space filter does not match the padded grid");
  const int64_t columns = grid_.ny * (grid_.nx / 2 + 1),
                blocks = (columns + kColumnBlock - 1) / kColumnBlock;
  const float scale = 1.0f / static_cast<float>(grid_.numel());
  filter_.assign(static_cast<size_t>(blocks * kColumnBlock * grid_.nz), 0.0f);
  for (int64_t z = 0; z < grid_.nz; ++z)
    for (int64_t c = 0; c < columns; ++c)
      filter_[static_cast<size_t>(c * grid_.nz + z)] =
          half_filter[static_cast<size_t>(z * columns + c)] * scale;
  const int gz = static_cast<int>(grid_.nz), gy = static_cast<int>(grid_.ny),
            gx = static_cast<int>(grid_.nx), hx = gx / 2 + 1, ny = static_cast<int>(dims.ny),
            block = static_cast<int>(kColumnBlock);
  // The plans run on rows, planes and column blocks anywhere in the buffers,
  // so none may assume an alignment; FFTW_ESTIMATE never touches the arrays,
  // so a scratch buffer stands in for the rows and columns while planning.
  const unsigned flags = FFTW_ESTIMATE | FFTW_UNALIGNED;
  FftwBuffer<float> rows(std::max<int64_t>(int64_t{ny} * gx, 2 * kColumnBlock * gz));
  spectrum_ = static_cast<std::complex<float>*>(
      fftwf_malloc(sizeof(fftwf_complex) * static_cast<size_t>(grid_.half_numel())));
  if (!spectrum_) fail("out of host memory for a ", grid_.nz, "x", grid_.ny, "x", grid_.nx, " FFT");
  auto* col = reinterpret_cast<fftwf_complex*>(rows.p);
  fftwf_complex* spec = as_fftw(spectrum_);
  std::lock_guard<std::mutex> lock(fftw_planner_mutex());
  plans_[0] =
      fftwf_plan_many_dft_r2c(1, &gx, ny, rows.p, nullptr, 1, gx, spec, nullptr, 1, hx, flags);
  plans_[1] =
      fftwf_plan_many_dft_c2r(1, &gx, ny, spec, nullptr, 1, hx, rows.p, nullptr, 1, gx, flags);
  plans_[2] = fftwf_plan_many_dft(1, &gy, hx, spec, nullptr, hx, 1, spec, nullptr, hx, 1,
                                  FFTW_FORWARD, flags);
  plans_[3] = fftwf_plan_many_dft(1, &gy, hx, spec, nullptr, hx, 1, spec, nullptr, hx, 1,
                                  FFTW_BACKWARD, flags);
  plans_[4] = fftwf_plan_many_dft(1, &gz, block, col, nullptr, 1, gz, col, nullptr, 1, gz,
                                  FFTW_FORWARD, flags);
  plans_[5] = fftwf_plan_many_dft(1, &gz, block, col, nullptr, 1, gz, col, nullptr, 1, gz,
                                  FFTW_BACKWARD, flags);
  for (void* plan : plans_)
    if (!plan) {
      for (void* q : plans_)
        if (q) fftwf_destroy_plan(static_cast<fftwf_plan>(q));
      fftwf_free(spectrum_);
      fail("FFTW could not plan a ", grid_.nz, "x", grid_.ny, "x", grid_.nx, " filter");
    }
}

PaddedFilter::~PaddedFilter() {
  {
    std::lock_guard<std::mutex> lock(fftw_planner_mutex());
    for (void* plan : plans_) fftwf_destroy_plan(static_cast<fftwf_plan>(plan));
  }
  fftwf_free(spectrum_);
}

// Unpadded planes z0..z1: rows zero-padded along x, R2C along x into the
// plane's unpadded rows, its padding rows zeroed, then the y transforms.
void PaddedFilter::forward_planes(const float* in, int64_t z0, int64_t z1) {
  const int64_t gx = grid_.nx, hx = gx / 2 + 1, plane = grid_.ny * hx, ny = dims_.ny, nx = dims_.nx,
                p = pad_;
  FftwBuffer<float> rows(ny * gx);
  for (int64_t z = z0; z < z1; ++z) {
    for (int64_t y = 0; y < ny; ++y) {
      float* row = rows.p + y * gx;
      std::fill(row, row + p, 0.0f);
      std::memcpy(row + p, in + (z * ny + y) * nx, sizeof(float) * static_cast<size_t>(nx));
      std::fill(row + p + nx, row + gx, 0.0f);
    }
    std::complex<float>* s = spectrum_ + (z + p) * plane;
    fftwf_execute_dft_r2c(static_cast<fftwf_plan>(plans_[0]), rows.p, as_fftw(s + p * hx));
    std::fill(s, s + p * hx, std::complex<float>{});
    std::fill(s + (p + ny) * hx, s + plane, std::complex<float>{});
    fftwf_execute_dft(static_cast<fftwf_plan>(plans_[2]), as_fftw(s), as_fftw(s));
  }
}

// Column blocks b0..b1 of the (y, kx) columns: gathered with the padding
// planes as zeros, transformed along z, filtered (with FFTW's 1/N), inverse
// transformed, and the unpadded planes written back.
void PaddedFilter::filter_columns(int64_t b0, int64_t b1) {
  const int64_t gz = grid_.nz, columns = grid_.ny * (grid_.nx / 2 + 1), p = pad_, nz = dims_.nz;
  FftwBuffer<std::complex<float>> col(kColumnBlock * gz);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t c0 = b * kColumnBlock, m = std::min(kColumnBlock, columns - c0);
    // Plane by plane, so the spectrum is read in runs of m values.
    for (int64_t z = 0; z < gz; ++z) {
      const bool inside = z >= p && z < p + nz;
      const std::complex<float>* s = spectrum_ + z * columns + c0;
      for (int64_t j = 0; j < kColumnBlock; ++j)
        col.p[j * gz + z] = inside && j < m ? s[j] : std::complex<float>{};
    }
    fftwf_execute_dft(static_cast<fftwf_plan>(plans_[4]), as_fftw(col.p), as_fftw(col.p));
    const float* f = filter_.data() + c0 * gz;
    for (int64_t i = 0; i < m * gz; ++i) col.p[i] *= f[i];
    fftwf_execute_dft(static_cast<fftwf_plan>(plans_[5]), as_fftw(col.p), as_fftw(col.p));
    for (int64_t z = p; z < p + nz; ++z) {
      std::complex<float>* s = spectrum_ + z * columns + c0;
      for (int64_t j = 0; j < m; ++j) s[j] = col.p[j * gz + z];
    }
  }
}

// Unpadded planes z0..z1: inverse y transforms, C2R along x of the unpadded
// rows, their unpadded voxels copied out.
void PaddedFilter::inverse_planes(float* out, int64_t z0, int64_t z1) {
  const int64_t gx = grid_.nx, hx = gx / 2 + 1, plane = grid_.ny * hx, ny = dims_.ny, nx = dims_.nx,
                p = pad_;
  FftwBuffer<float> rows(ny * gx);
  for (int64_t z = z0; z < z1; ++z) {
    std::complex<float>* s = spectrum_ + (z + p) * plane;
    fftwf_execute_dft(static_cast<fftwf_plan>(plans_[3]), as_fftw(s), as_fftw(s));
    fftwf_execute_dft_c2r(static_cast<fftwf_plan>(plans_[1]), as_fftw(s + p * hx), rows.p);
    for (int64_t y = 0; y < ny; ++y)
      std::memcpy(out + (z * ny + y) * nx, rows.p + y * gx + p,
                  sizeof(float) * static_cast<size_t>(nx));
  }
}

void PaddedFilter::apply(const float* in, float* out) {
  const auto each = [this](int64_t n, const auto& f) {
    if (threaded_)
      parallel_for(n, 1, f);
    else
      f(int64_t{0}, n);
  };
  // All of `in` is read before `out` is written, so they may alias.
  each(dims_.nz, [&](int64_t z0, int64_t z1) { forward_planes(in, z0, z1); });
  const int64_t columns = grid_.ny * (grid_.nx / 2 + 1);
  each((columns + kColumnBlock - 1) / kColumnBlock,
       [&](int64_t b0, int64_t b1) { filter_columns(b0, b1); });
  each(dims_.nz, [&](int64_t z0, int64_t z1) { inverse_planes(out, z0, z1); });
}

void forward_field(const float* chi, const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                   double k0_value, int64_t pad, float* field) {
  if (pad < 0) fail("dipole padding must be >= 0, got ", pad);
  PaddedFilter(dims, pad, dipole_kernel(dims.padded(pad), voxel_mm, b0_dir, k0_value))
      .apply(chi, field);
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
