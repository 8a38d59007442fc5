// Dipole physics: the k-space kernel against closed-form values, the forward
// model against the analytic field of a magnetised sphere and against a naive
// DFT, and TKD against the same naive DFT and as an (approximate) inverse.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <complex>
#include <vector>

#include "core/error.h"
#include "core/nn/philox.h"
#include "core/qsm/dipole.h"
#include "core/qsm/tkd.h"
#include "tests/test_util.h"

using namespace dq;

namespace {

using dq::test::rel_l2;

const Vec3 kIso{1.0, 1.0, 1.0};
const Vec3 kBz{0.0, 0.0, 1.0};

int64_t at(const Dims3& d, int64_t z, int64_t y, int64_t x) {
  return (z * d.ny + y) * d.nx + x;
}

std::vector<float> random_volume(const Dims3& d, uint64_t key) {
  std::vector<float> v(static_cast<size_t>(d.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = philox_uniform(key, i) - 0.5f;
  return v;
}

// Re(IDFT(filter . DFT(in))) by the O(N^2) definition, in double: the
// reference the FFT path is checked against. filter is on the full grid.
std::vector<double> naive_filter(const std::vector<float>& in, const Dims3& d,
                                 const std::vector<double>& filter) {
  const double two_pi = 2.0 * M_PI;
  const int64_t n = d.numel();
  auto phase = [&](int64_t a, int64_t b) {  // 2 pi k.r / N per axis, a and b flat indices
    const int64_t az = a / (d.ny * d.nx), ay = a / d.nx % d.ny, ax = a % d.nx;
    const int64_t bz = b / (d.ny * d.nx), by = b / d.nx % d.ny, bx = b % d.nx;
    return two_pi * (static_cast<double>(az * bz) / d.nz + static_cast<double>(ay * by) / d.ny +
                     static_cast<double>(ax * bx) / d.nx);
  };
  std::vector<std::complex<double>> spec(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    std::complex<double> s = 0;
    for (int64_t r = 0; r < n; ++r) s += static_cast<double>(in[r]) * std::polar(1.0, -phase(k, r));
    spec[k] = s * filter[k];
  }
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    std::complex<double> s = 0;
    for (int64_t k = 0; k < n; ++k) s += spec[k] * std::polar(1.0, phase(k, r));
    out[r] = s.real() / static_cast<double>(n);
  }
  return out;
}

// naive_filter of `in` zero-padded by `pad` voxels per side, with the dipole
// kernel of the padded grid, cropped back to `d`.
std::vector<double> naive_padded_dipole(const std::vector<float>& in, const Dims3& d, int64_t pad,
                                        const Vec3& voxel, const Vec3& b0, double k0) {
  const Dims3 g = d.padded(pad);
  std::vector<float> padded(static_cast<size_t>(g.numel()), 0.0f);
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x)
        padded[at(g, z + pad, y + pad, x + pad)] = in[at(d, z, y, x)];
  const std::vector<float> kf = dipole_kernel_full(g, voxel, b0, k0);
  const std::vector<double> ref_padded =
      naive_filter(padded, g, std::vector<double>(kf.begin(), kf.end()));
  std::vector<double> ref(in.size());
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x)
        ref[at(d, z, y, x)] = ref_padded[at(g, z + pad, y + pad, x + pad)];
  return ref;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace

TEST_CASE("fftfreq order matches numpy", "[dipole]") {
  // numpy.fft.fftfreq(5) * 5 = [0, 1, 2, -2, -1]; fftfreq(4) * 4 = [0, 1, -2, -1]
  const int64_t odd[] = {0, 1, 2, -2, -1}, even[] = {0, 1, -2, -1};
  for (int i = 0; i < 5; ++i) CHECK(fftfreq_index(i, 5) == odd[i]);
  for (int i = 0; i < 4; ++i) CHECK(fftfreq_index(i, 4) == even[i]);
}

TEST_CASE("dipole kernel matches closed-form values", "[dipole]") {
  const Dims3 d{8, 8, 8};
  const std::vector<float> k = dipole_kernel_full(d, kIso, kBz, 1.0 / 3.0);
  CHECK(k[at(d, 1, 0, 0)] == Approx(1.0 / 3.0 - 1.0));        // k along B0: -2/3
  CHECK(k[at(d, 7, 0, 0)] == Approx(-2.0 / 3.0));             // negative frequency, same line
  CHECK(k[at(d, 0, 0, 3)] == Approx(1.0 / 3.0));              // k along x, perpendicular
  CHECK(k[at(d, 0, 2, 0)] == Approx(1.0 / 3.0));              // k along y
  CHECK(k[at(d, 1, 0, 1)] == Approx(1.0 / 3.0 - 0.5));        // 45 degrees in x-z
  CHECK(k[at(d, 2, 1, 1)] == Approx(1.0 / 3.0 - 4.0 / 6.0));  // kz^2/|k|^2 = 4/6
  CHECK(k[0] == Approx(1.0 / 3.0));                           // D(0) = k0_value
  CHECK(dipole_kernel_full(d, kIso, kBz, 0.0)[0] == 0.0f);

  SECTION("anisotropic voxels scale k per axis") {
    // voxel (x, y, z) = (1, 1, 2) mm: kz = 1/16, kx = 1/8 cycles/mm, so
    // kz^2/|k|^2 = (1/256) / (1/64 + 1/256) = 1/5.
    const std::vector<float> a = dipole_kernel_full(d, {1.0, 1.0, 2.0}, kBz, 1.0 / 3.0);
    CHECK(a[at(d, 1, 0, 1)] == Approx(1.0 / 3.0 - 0.2));
    CHECK(a[at(d, 1, 0, 0)] == Approx(-2.0 / 3.0));
  }
  SECTION("B0 direction is normalised and used as given") {
    // b = (1, 0, 1)/sqrt(2): k along z gives (k.b)^2/|k|^2 = 1/2; k along y gives 0.
    const std::vector<float> o = dipole_kernel_full(d, kIso, {1.0, 0.0, 1.0}, 1.0 / 3.0);
    CHECK(o[at(d, 1, 0, 0)] == Approx(1.0 / 3.0 - 0.5));
    CHECK(o[at(d, 0, 1, 0)] == Approx(1.0 / 3.0));
    CHECK(o[at(d, 1, 0, 7)] == Approx(1.0 / 3.0));  // k = (-1, 0, 1)/8, perpendicular to b
    CHECK_THROWS_AS(dipole_kernel_full(d, kIso, {0.0, 0.0, 0.0}, 0.0), Error);
  }
  SECTION("half spectrum is the full kernel's first nx/2 + 1 columns") {
    for (const Dims3& g : {Dims3{4, 6, 8}, Dims3{3, 5, 7}}) {
      const Vec3 b{0.3, -0.4, 0.8};
      const std::vector<float> full = dipole_kernel_full(g, {0.9, 1.1, 1.3}, b, 0.25);
      const std::vector<float> half = dipole_kernel(g, {0.9, 1.1, 1.3}, b, 0.25);
      const int64_t hx = g.nx / 2 + 1;
      REQUIRE(static_cast<int64_t>(half.size()) == g.half_numel());
      for (int64_t z = 0; z < g.nz; ++z)
        for (int64_t y = 0; y < g.ny; ++y)
          for (int64_t x = 0; x < hx; ++x)
            CHECK(half[(z * g.ny + y) * hx + x] == full[at(g, z, y, x)]);
    }
  }
}

TEST_CASE("forward field matches a naive DFT, with and without padding", "[dipole]") {
  const Dims3 d{3, 4, 5};
  const std::vector<float> chi = random_volume(d, 11);
  for (int64_t pad : {0, 2}) {
    const Vec3 voxel{1.0, 0.8, 1.5};
    std::vector<float> field(chi.size());
    forward_field(chi.data(), d, voxel, kBz, 1.0 / 3.0, pad, field.data());
    INFO("pad " << pad);
    CHECK(max_abs_diff(field, naive_padded_dipole(chi, d, pad, voxel, kBz, 1.0 / 3.0)) < 1e-5);
  }
}

TEST_CASE("with B0 oblique on even grids the field is the real part of the complex inverse",
          "[dipole]") {
  // On an even axis's Nyquist plane -k wraps onto itself, so the closed-form
  // D is not Hermitian there when B0 is oblique; the C2R transform would
  // then depend on the FFT library. The kernel is its symmetric part: the
  // field equals Re(IDFT(DFT(chi) * D)) with the closed-form D, computed
  // naively in double, and the kernel equals its own mirror D(-k).
  const Dims3 d{4, 6, 8};
  const Vec3 voxel{0.9, 1.1, 1.3}, b{0.3, -0.4, 0.8};
  const double bn = std::sqrt(0.3 * 0.3 + 0.4 * 0.4 + 0.8 * 0.8);
  std::vector<double> closed(static_cast<size_t>(d.numel()));
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x) {
        const double kz = fftfreq_index(z, d.nz) / (d.nz * voxel[2]);
        const double ky = fftfreq_index(y, d.ny) / (d.ny * voxel[1]);
        const double kx = fftfreq_index(x, d.nx) / (d.nx * voxel[0]);
        const double k2 = kx * kx + ky * ky + kz * kz;
        const double kb = (kx * b[0] + ky * b[1] + kz * b[2]) / bn;
        closed[at(d, z, y, x)] = k2 > 0 ? 1.0 / 3.0 - kb * kb / k2 : 1.0 / 3.0;
      }
  const std::vector<float> chi = random_volume(d, 5);
  std::vector<float> field(chi.size());
  forward_field(chi.data(), d, voxel, b, 1.0 / 3.0, 0, field.data());
  CHECK(max_abs_diff(field, naive_filter(chi, d, closed)) < 1e-5);

  const std::vector<float> full = dipole_kernel_full(d, voxel, b, 1.0 / 3.0);
  int64_t changed = 0;
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x) {
        const int64_t i = at(d, z, y, x);
        CHECK(full[i] == full[at(d, (d.nz - z) % d.nz, (d.ny - y) % d.ny, (d.nx - x) % d.nx)]);
        const bool nyq = z == d.nz / 2 || y == d.ny / 2 || x == d.nx / 2;
        if (!nyq) CHECK(full[i] == Approx(closed[i]).margin(1e-7));
        if (std::fabs(full[i] - closed[i]) > 1e-4) ++changed;
      }
  CHECK(changed > 0);  // the test's grid does have non-Hermitian Nyquist bins
}

TEST_CASE("the padded filter matches a naive DFT on odd and even grids and blocks", "[dipole]") {
  // PaddedFilter skips the padding's transforms and runs the z pass on blocks
  // of 32 columns: grids with odd and even sides, a last block part-full and
  // several blocks, padding 0 and not, B0 oblique (a kernel without symmetry
  // in x or y).
  const Vec3 b0{0.3, -0.4, 0.87};
  for (const auto& [d, pad] :
       {std::pair<Dims3, int64_t>{{4, 5, 6}, 0}, {{5, 4, 3}, 1}, {{3, 6, 7}, 3}, {{2, 9, 1}, 2}}) {
    const std::vector<float> in = random_volume(d, 21);
    const Vec3 voxel{1.0, 1.2, 0.9};
    const std::vector<double> ref = naive_padded_dipole(in, d, pad, voxel, b0, 0.1);
    const Dims3 g = d.padded(pad);
    PaddedFilter filter(d, pad, dipole_kernel(g, voxel, b0, 0.1));
    CHECK(filter.grid() == g);
    std::vector<float> out(in.size(), 7.0f);
    filter.apply(in.data(), out.data());
    INFO(d.nz << "x" << d.ny << "x" << d.nx << " pad " << pad);
    CHECK(max_abs_diff(out, ref) < 1e-5);
    // Applied again in place (in and out alias): the same result.
    std::vector<float> again = in;
    filter.apply(again.data(), again.data());
    CHECK(again == out);
  }
  CHECK_THROWS_WITH(PaddedFilter({3, 3, 3}, 1, std::vector<float>(10)),
                    Catch::Contains("does not match the padded grid"));
}

TEST_CASE("a multi-threaded 3-D FFT plan transforms like the single-threaded one", "[dipole]") {
  // Fft3 (TV's transforms): FFTW splits the transform across threads; the
  // spectrum and the round trip must not change by more than rounding.
  const Dims3 d{24, 20, 18};
  const std::vector<float> v = random_volume(d, 5);
  Fft3 single(d), threaded(d, 4);
  std::copy(v.begin(), v.end(), single.real());
  std::copy(v.begin(), v.end(), threaded.real());
  single.forward();
  threaded.forward();
  double spec = 0.0;
  for (int64_t i = 0; i < d.half_numel(); ++i)
    spec = std::max(spec,
                    static_cast<double>(std::abs(single.spectrum()[i] - threaded.spectrum()[i])));
  CHECK(spec < 1e-4);
  threaded.inverse();
  CHECK(max_abs_diff(v, std::vector<double>(threaded.real(), threaded.real() + d.numel())) < 1e-6);
  CHECK(fft_threads() >= 1);
}

TEST_CASE("forward field of a magnetised sphere matches the analytic dipole field", "[dipole]") {
  // A sphere of radius 8 voxels in a 64^3 grid, padded by 32 per side so
  // the periodic images sit 128 voxels apart. Outside, the Lorentz-corrected
  // field is chi/3 (a/r)^3 (3 cos^2 theta - 1); inside it is 0. The voxelised
  // sphere's radius a is taken from its voxel count (equal volume).
  const Dims3 d{64, 64, 64};
  const double chi0 = 0.1, c = 32.0, radius = 8.0;
  std::vector<float> chi(static_cast<size_t>(d.numel()), 0.0f);
  int64_t count = 0;
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x) {
        const double r2 = (x - c) * (x - c) + (y - c) * (y - c) + (z - c) * (z - c);
        if (r2 <= radius * radius) {
          chi[at(d, z, y, x)] = static_cast<float>(chi0);
          ++count;
        }
      }
  const double a = std::cbrt(3.0 * static_cast<double>(count) / (4.0 * M_PI));
  const int64_t pad = 32;
  std::vector<float> f0(chi.size()), f3(chi.size());
  forward_field(chi.data(), d, kIso, kBz, 0.0, pad, f0.data());
  forward_field(chi.data(), d, kIso, kBz, 1.0 / 3.0, pad, f3.data());

  const int64_t ci = static_cast<int64_t>(c);
  for (int64_t r : {11, 13, 16, 20}) {
    const double along_b0 = chi0 / 3.0 * std::pow(a / r, 3) * 2.0;  // theta = 0
    const double across = -chi0 / 3.0 * std::pow(a / r, 3);         // theta = 90 degrees
    INFO("r = " << r << " voxels, a = " << a);
    CHECK(f0[at(d, ci + r, ci, ci)] == Approx(along_b0).epsilon(0.03));
    CHECK(f0[at(d, ci - r, ci, ci)] == Approx(along_b0).epsilon(0.03));
    CHECK(f0[at(d, ci, ci, ci + r)] == Approx(across).epsilon(0.03));
    CHECK(f0[at(d, ci, ci + r, ci)] == Approx(across).epsilon(0.03));
  }
  // Inside: ~0, within 1 % of chi at the centre and half-way out.
  CHECK(std::fabs(f0[at(d, ci, ci, ci)]) < 0.01 * chi0);
  CHECK(std::fabs(f0[at(d, ci + 4, ci, ci)]) < 0.01 * chi0);
  CHECK(std::fabs(f0[at(d, ci, ci, ci + 4)]) < 0.01 * chi0);

  // D(0) = 1/3 instead of 0 shifts the whole padded grid by mean(chi)/3.
  const double shift = chi0 * static_cast<double>(count) / (3.0 * d.padded(pad).numel());
  for (int64_t i : {at(d, 0, 0, 0), at(d, ci, ci, ci), at(d, ci + 11, ci, ci)})
    CHECK(f3[i] - f0[i] == Approx(shift).epsilon(0.01));
}

TEST_CASE("forward_field on tensors keeps the shape and refuses others", "[dipole]") {
  Tensor chi = Tensor::zeros({1, 6, 5, 4, 1});
  const std::vector<float> v = random_volume({6, 5, 4}, 3);
  std::copy(v.begin(), v.end(), chi.f32());
  const Tensor f5 = forward_field(chi, kIso, kBz);
  const Tensor f3 = forward_field(chi.reshaped({6, 5, 4}), kIso, kBz);
  REQUIRE(f5.shape() == chi.shape());
  REQUIRE(f3.shape() == Shape{6, 5, 4});
  for (int64_t i = 0; i < chi.numel(); ++i) CHECK(f5.f32()[i] == f3.f32()[i]);
  CHECK_THROWS_AS(forward_field(Tensor::zeros({2, 6, 5, 4, 1}), kIso, kBz), Error);
  CHECK_THROWS_AS(forward_field(chi, kIso, kBz, 1.0 / 3.0, -1), Error);
}

TEST_CASE("TKD matches a naive DFT with the truncated inverse kernel", "[dipole]") {
  struct Case {
    Dims3 d;
    Vec3 voxel, b0;
    double k0;
  };
  // Even sizes with B0 along an axis, odd sizes (no Nyquist bins) with B0
  // oblique: there the kernel is exactly Hermitian, so C2R and the real part
  // of a complex inverse DFT agree (see dipole.cpp).
  for (const Case& c : {Case{{4, 6, 8}, {1.0, 1.0, 1.5}, {0.0, 0.0, 1.0}, 1.0 / 3.0},
                        Case{{3, 5, 7}, {1.0, 1.0, 1.0}, {0.0, 0.6, 0.8}, 0.0}}) {
    const std::vector<float> field = random_volume(c.d, 5);
    const double t = kTkdThreshold;
    const std::vector<float> kf = dipole_kernel_full(c.d, c.voxel, c.b0, c.k0);
    std::vector<double> inv(kf.size());
    for (size_t i = 0; i < kf.size(); ++i) {
      const double v = kf[i];
      inv[i] = std::fabs(v) > t ? 1.0 / v : (v > 0 ? 1.0 / t : (v < 0 ? -1.0 / t : 0.0));
    }
    const std::vector<double> ref = naive_filter(field, c.d, inv);
    std::vector<float> chi(field.size());
    tkd(field.data(), c.d, c.voxel, c.b0, t, c.k0, 0, chi.data());
    INFO("grid " << c.d.nz << "x" << c.d.ny << "x" << c.d.nx);
    CHECK(max_abs_diff(chi, ref) < 1e-5);
  }
}

TEST_CASE("TKD approximately inverts the forward model on a smooth chi", "[dipole]") {
  // A Gaussian blob (sigma 3 voxels) in a periodic 32^3 grid. B0 is tilted
  // off the z axis because with B0 along an axis of an isotropic grid D is
  // exactly 0 on bins such as k ~ (1, 1, 1), which carry much of a smooth
  // blob's energy and which no inversion can recover.
  const Dims3 d{32, 32, 32};
  const Vec3 b0{0.1, 0.2, std::sqrt(0.95)};
  std::vector<float> chi(static_cast<size_t>(d.numel()));
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x) {
        const double r2 =
            (x - 16.0) * (x - 16.0) + (y - 15.0) * (y - 15.0) + (z - 17.0) * (z - 17.0);
        chi[at(d, z, y, x)] = static_cast<float>(0.1 * std::exp(-r2 / (2 * 9.0)));
      }
  std::vector<float> field(chi.size()), rec(chi.size()), rec_fine(chi.size());
  forward_field(chi.data(), d, kIso, b0, 1.0 / 3.0, 0, field.data());
  tkd(field.data(), d, kIso, b0, kTkdThreshold, 1.0 / 3.0, 0, rec.data());
  tkd(field.data(), d, kIso, b0, 1e-3, 1.0 / 3.0, 0, rec_fine.data());
  double sxy = 0, sxx = 0, syy = 0;  // cosine similarity of rec and chi
  for (size_t i = 0; i < chi.size(); ++i) {
    sxy += rec[i] * chi[i];
    sxx += chi[i] * chi[i];
    syy += rec[i] * rec[i];
  }
  const double e = rel_l2(rec, chi), e_fine = rel_l2(rec_fine, chi);
  INFO("NRMSE t=0.19: " << e << ", t=0.001: " << e_fine);
  // The 0.19 truncation underestimates chi (a third of k-space is clamped)
  // but keeps its shape; a tiny threshold is all but the exact inverse.
  CHECK(e < 0.4);
  CHECK(sxy / std::sqrt(sxx * syy) > 0.9);
  CHECK(e_fine < 0.01);
}

TEST_CASE("tkd_patches inverts each patch on its own grid", "[dipole]") {
  const int64_t P = 8;
  Tensor field = Tensor::zeros({3, P, P, P, 1});
  const std::vector<float> v = random_volume({3 * P, P, P}, 9);
  std::copy(v.begin(), v.end(), field.f32());
  const Vec3 b0{0.0, 0.0, 1.0};
  const Tensor chi = tkd_patches(field, kIso, b0);
  REQUIRE(chi.shape() == field.shape());
  for (int64_t n = 0; n < 3; ++n) {
    const Tensor one = tkd(field.slice(n * P * P * P, {P, P, P}), kIso, b0);
    for (int64_t i = 0; i < P * P * P; ++i) CHECK(chi.f32()[n * P * P * P + i] == one.f32()[i]);
  }
  CHECK_THROWS_AS(tkd_patches(Tensor::zeros({3, P, P, P}), kIso, b0), Error);
  CHECK_THROWS_AS(tkd_patches(field, kIso, b0, 0.0), Error);
}
