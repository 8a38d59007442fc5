// The QSM forward model: a susceptibility map chi (ppm) convolved with the
// unit dipole gives the local field (ppm of B0). The convolution is done in
// k-space with FFTW (single precision, real-to-complex), on grids
// (D, H, W) = (z, y, x) with x fastest; physical vectors (voxel size, B0
// direction) are given as (x, y, z).
//
// Dipole kernel (DESIGN.md): D(k) = 1/3 - (k . b)^2 / |k|^2, k_i = m_i /
// (n_i * voxel_i) with m_i in numpy fftfreq order, b the unit B0 direction.
// D(0) is a choice: the DeepQSM lineage and qsm-forward use 1/3, QSM.rs uses
// 0. With 1/3 the mean of the field is mean(chi)/3; with 0 it is 0, which is
// the angular average of D and matches the infinite-space field of a
// compact source. The kernel is Lorentz-corrected: a uniformly magnetised
// sphere has field chi/3 (a/r)^3 (3 cos^2 theta - 1) outside and 0 inside
// with D(0) = 0; D(0) = 1/3 adds the constant mean(chi)/3 over the (padded)
// grid everywhere (tests/test_dipole.cpp checks both).
#pragma once
#include <array>
#include <complex>
#include <cstdint>
#include <mutex>
#include <vector>

#include "core/dims.h"
#include "core/hd.h"
#include "core/nn/tensor.h"

namespace dq {

// numpy.fft.fftfreq index: m for bin i of an n-point transform
// (0, 1, ..., ceil(n/2) - 1, -floor(n/2), ..., -1).
DQ_HD int64_t fftfreq_index(int64_t i, int64_t n) {
  return i < (n + 1) / 2 ? i : i - n;
}

// Everything one bin of the dipole kernel depends on; plain data, so the
// CUDA kernel takes it by value.
struct DipoleSpec {
  int64_t nz, ny, nx;  // the grid
  double vx, vy, vz;   // voxel size, mm
  double bx, by, bz;   // unit B0 direction
  double k0;           // D(0)
};

// Validates the grid, voxel size and B0 direction (one clear error each) and
// normalises the direction.
DipoleSpec dipole_spec(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                       double k0_value);

// D at bin (z, y, x) of the grid, bins labelled in fftfreq order, computed in
// double (no FMA) and rounded once to float; the CPU kernel (dipole_kernel)
// and the GPU one (cuda_dipole_kernel) both call this, so they agree exactly.
//
// On a Nyquist plane of an even axis the label -n/2 is also +n/2, and with
// B0 oblique to that axis D(k) is not D(-k) there: D(k) = 1/3 - (k.b)^2/|k|^2
// is even in k, but -k wraps the Nyquist component back onto itself. A
// kernel that is not Hermitian-symmetric leaves the C2R result undefined
// (FFTW ignores the imaginary part those planes get, cuFFT may not, so the
// CPU and GPU would disagree). The kernel is therefore the symmetric part,
// (D(k) + D(-k))/2 with -k taken on the periodic grid, which is what the real
// part of a full complex inverse FFT (numpy's ifftn(...).real) applies:
// with a = the k.b terms of the other axes and c = those of the Nyquist ones,
// (k.b)^2 becomes ((a + c)^2 + (a - c)^2)/2 = a^2 + c^2. Away from Nyquist
// planes c = 0 and nothing changes; with B0 along an axis neither.
DQ_HD float dipole_bin(const DipoleSpec& s, int64_t z, int64_t y, int64_t x) {
  const double kz = static_cast<double>(fftfreq_index(z, s.nz)) / (s.nz * s.vz);
  const double ky = static_cast<double>(fftfreq_index(y, s.ny)) / (s.ny * s.vy);
  const double kx = static_cast<double>(fftfreq_index(x, s.nx)) / (s.nx * s.vx);
  const double k2 = add_rn(add_rn(mul_rn(kx, kx), mul_rn(ky, ky)), mul_rn(kz, kz));
  double a = 0.0, c = 0.0;  // x, y, z order
  double& ax = s.nx % 2 == 0 && x == s.nx / 2 ? c : a;
  ax = add_rn(ax, mul_rn(kx, s.bx));
  double& ay = s.ny % 2 == 0 && y == s.ny / 2 ? c : a;
  ay = add_rn(ay, mul_rn(ky, s.by));
  double& az = s.nz % 2 == 0 && z == s.nz / 2 ? c : a;
  az = add_rn(az, mul_rn(kz, s.bz));
  const double kb2 = add_rn(mul_rn(a, a), mul_rn(c, c));
  return static_cast<float>(k2 > 0.0 ? 1.0 / 3.0 - kb2 / k2 : s.k0);
}

// FFTW's planner (plan creation and destruction) is not thread-safe; every
// planner call in the project takes this mutex. fftwf_execute on distinct
// plans/buffers is thread-safe and needs no lock.
std::mutex& fftw_planner_mutex();

// The threads a repeated transform on an otherwise idle machine should use:
// cpu_threads() of core/parallel.h.
int fft_threads();

// R2C / C2R plans for one grid, on buffers it owns. Plans are made with
// FFTW_ESTIMATE (milliseconds), so building one per volume or per batch is
// cheap; reuse one across volumes of the same size when convenient. To filter
// a zero-padded volume, PaddedFilter (below) is faster.
class Fft3 {
 public:
  // threads > 1 plans multi-threaded transforms (FFTW's OpenMP or threads library,
  // when it was found at build time; otherwise one thread). Use it for a
  // transform repeated many times on an otherwise idle machine (the CG
  // refinement, TV); generators that already run one transform per worker
  // keep the default 1.
  explicit Fft3(const Dims3& dims, int threads = 1);
  ~Fft3();
  Fft3(const Fft3&) = delete;
  Fft3& operator=(const Fft3&) = delete;

  const Dims3& dims() const { return dims_; }
  int threads() const { return threads_; }
  float* real() { return real_; }                        // (nz, ny, nx)
  std::complex<float>* spectrum() { return spectrum_; }  // (nz, ny, nx/2 + 1)

  // real() -> spectrum(), unnormalised.
  void forward();
  // spectrum() -> real(), scaled by 1 / numel so inverse(forward(x)) == x.
  // FFTW's C2R overwrites its input: spectrum() is garbage afterwards.
  void inverse();

 private:
  Dims3 dims_;
  int threads_ = 1;
  float* real_ = nullptr;
  std::complex<float>* spectrum_ = nullptr;
  void* plan_r2c_ = nullptr;  // fftwf_plan, kept opaque so users need no <fftw3.h>
  void* plan_c2r_ = nullptr;
};

// The real dipole kernel on the R2C half-spectrum grid (nz, ny, nx/2 + 1).
// b0_dir need not be normalised (it must be non-zero); voxel_mm in mm, so k
// is in cycles/mm (the kernel only depends on k's direction).
std::vector<float> dipole_kernel(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                                 double k0_value);
// The same kernel on the full grid (nz, ny, nx), for references and tests.
std::vector<float> dipole_kernel_full(const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                                      double k0_value);

// out = crop(IFFT(filter . FFT(zero_pad(in, pad)))) for volumes of one grid:
// `in` and `out` are (nz, ny, nx) = `dims` (they may alias) and `half_filter`
// is a real filter on the padded grid's half spectrum, (nz, ny, nx/2 + 1) of
// dims.padded(pad).
//
// The 3-D transform runs as 1-D transforms along x, y and z that skip what the
// padding makes zero or the crop throws away: the forward x and y passes and
// the inverse y and x passes run on the unpadded z planes only (and x on their
// unpadded rows), and the z passes run on blocks of columns gathered into a
// small buffer, where the filter is applied between the forward and inverse
// transforms. On the refinement's 160^3 grid padded by 32 this is about 1.7x
// faster than FFTW's 3-D plans (BENCHMARKS.md), in 40 % less memory (no padded
// real volume). Every 1-D transform and product is computed alone, so the
// result does not depend on the thread count: `threaded` shares the planes and
// column blocks among cpu_threads() OpenMP threads (core/parallel.h; the
// refinement), otherwise all runs on the caller (the generators' workers,
// one volume each). One apply() at a time per object (it owns the spectrum).
class PaddedFilter {
 public:
  PaddedFilter(const Dims3& dims, int64_t pad, const std::vector<float>& half_filter,
               bool threaded = false);
  ~PaddedFilter();
  PaddedFilter(const PaddedFilter&) = delete;
  PaddedFilter& operator=(const PaddedFilter&) = delete;

  const Dims3& grid() const { return grid_; }  // padded: dims + 2 pad per axis
  void apply(const float* in, float* out);

 private:
  Dims3 dims_, grid_;
  int64_t pad_;
  bool threaded_;
  std::complex<float>* spectrum_ = nullptr;  // (grid nz, ny, nx/2 + 1)
  // The filter (with FFTW's 1/N) by column block, (blocks, block, grid nz),
  // in the order the z pass reads it.
  std::vector<float> filter_;
  void* plans_[6] = {};  // fftwf_plan: x r2c, x c2r, y fwd/inv, z fwd/inv
  void forward_planes(const float* in, int64_t z0, int64_t z1);
  void filter_columns(int64_t b0, int64_t b1);
  void inverse_planes(float* out, int64_t z0, int64_t z1);
};

// field = IFFT(D . FFT(chi)) with `pad` zero voxels per side added before the
// FFT and cropped after (padding suppresses the wrap-around of the periodic
// convolution). chi in ppm gives the field in ppm. `chi` and `field` are
// (nz, ny, nx) and may alias.
void forward_field(const float* chi, const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                   double k0_value, int64_t pad, float* field);
// The same on a host fp32 tensor shaped (D, H, W) or (1, D, H, W, 1); the
// result has chi's shape.
Tensor forward_field(const Tensor& chi, const Vec3& voxel_mm, const Vec3& b0_dir,
                     double k0_value = 1.0 / 3.0, int64_t pad = 0);

// The grid of a (D, H, W) or (1, D, H, W, 1) host fp32 tensor; fails otherwise.
Dims3 volume_dims(const Tensor& t, const char* what);

}  // namespace dq
