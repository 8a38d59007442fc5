// Classical inversions and the CG refinement (core/qsm/inversion.h,
// core/qsm/refine.h): TKD and Tikhonov against a naive DFT with independently
// written k-space filters, the TV-ADMM objective decreasing, and CG reaching
// the closed-form solution of its normal equations.
#include <catch2/catch.hpp>
#include <cmath>
#include <complex>
#include <vector>

#include "core/error.h"
#include "core/nn/philox.h"
#include "core/qsm/dipole.h"
#include "core/qsm/inversion.h"
#include "core/qsm/metrics.h"
#include "core/qsm/refine.h"
#include "core/qsm/tkd.h"

using namespace dq;

namespace {

const Vec3 kBz{0.0, 0.0, 1.0};

std::vector<float> random_volume(const Dims3& d, uint64_t key) {
  std::vector<float> v(static_cast<size_t>(d.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.1f * (philox_uniform(key, i) - 0.5f);
  return v;
}

// Full-grid DFT and its inverse by the O(N^2) definition, in double.
using Spectrum = std::vector<std::complex<double>>;
double phase(const Dims3& d, int64_t a, int64_t b) {
  const int64_t az = a / (d.ny * d.nx), ay = a / d.nx % d.ny, ax = a % d.nx;
  const int64_t bz = b / (d.ny * d.nx), by = b / d.nx % d.ny, bx = b % d.nx;
  return 2.0 * M_PI *
         (static_cast<double>(az * bz) / d.nz + static_cast<double>(ay * by) / d.ny +
          static_cast<double>(ax * bx) / d.nx);
}
Spectrum dft(const std::vector<float>& in, const Dims3& d) {
  Spectrum s(static_cast<size_t>(d.numel()));
  for (int64_t k = 0; k < d.numel(); ++k)
    for (int64_t r = 0; r < d.numel(); ++r)
      s[k] += static_cast<double>(in[r]) * std::polar(1.0, -phase(d, k, r));
  return s;
}
std::vector<double> idft_real(const Spectrum& s, const Dims3& d) {
  std::vector<double> out(static_cast<size_t>(d.numel()));
  for (int64_t r = 0; r < d.numel(); ++r) {
    std::complex<double> v = 0;
    for (int64_t k = 0; k < d.numel(); ++k) v += s[k] * std::polar(1.0, phase(d, k, r));
    out[r] = v.real() / static_cast<double>(d.numel());
  }
  return out;
}

// |G(k)|^2 of the forward difference, |exp(2 pi i m / n) - 1|^2 / h^2 per axis.
double grad_sq(const Dims3& d, int64_t k, const Vec3& h) {
  const int64_t z = k / (d.ny * d.nx), y = k / d.nx % d.ny, x = k % d.nx;
  auto term = [](int64_t m, int64_t n, double hh) {
    return std::norm(std::polar(1.0, 2.0 * M_PI * m / n) - 1.0) / (hh * hh);
  };
  return term(x, d.nx, h[0]) + term(y, d.ny, h[1]) + term(z, d.nz, h[2]);
}

double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num = std::max(num, std::fabs(got[i] - want[i]));
    den = std::max(den, std::fabs(want[i]));
  }
  return num / den;
}

// A small chi phantom (a cube and a ball, ppm) and its field.
std::vector<float> phantom(const Dims3& d) {
  std::vector<float> chi(static_cast<size_t>(d.numel()), 0.0f);
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x) {
        float v = 0.0f;
        if (z >= 3 && z < 7 && y >= 3 && y < 8 && x >= 4 && x < 8) v += 0.1f;
        const double r2 = (z - 10.5) * (z - 10.5) + (y - 9.5) * (y - 9.5) + (x - 10.0) * (x - 10.0);
        if (r2 < 9.0) v -= 0.05f;
        chi[static_cast<size_t>((z * d.ny + y) * d.nx + x)] = v;
      }
  return chi;
}

}  // namespace

TEST_CASE("TKD matches a naive DFT with the truncated kernel", "[inversion]") {
  const Dims3 d{4, 5, 6};
  const Vec3 vox{1.0, 1.2, 0.9}, b0{0.0, 0.0, 1.0};
  const std::vector<float> f = random_volume(d, 1);
  std::vector<float> chi(f.size());
  tkd(f.data(), d, vox, b0, 0.19, 1.0 / 3.0, 0, chi.data());
  const std::vector<float> dk = dipole_kernel_full(d, vox, b0, 1.0 / 3.0);
  Spectrum s = dft(f, d);
  for (size_t k = 0; k < s.size(); ++k) {
    const double v = dk[k];
    s[k] *= std::fabs(v) > 0.19 ? 1.0 / v : (v > 0 ? 1.0 / 0.19 : (v < 0 ? -1.0 / 0.19 : 0.0));
  }
  CHECK(rel_err(chi, idft_real(s, d)) < 1e-4);
}

TEST_CASE("Tikhonov (identity and gradient) matches a naive DFT", "[inversion]") {
  // Odd sizes and an oblique B0 so no Nyquist bin is involved.
  const Dims3 d{5, 5, 7};
  const Vec3 vox{1.0, 1.1, 1.3}, b0{0.3, 0.2, 1.0};
  const std::vector<float> f = random_volume(d, 2);
  const std::vector<float> dk = dipole_kernel_full(d, vox, b0, 1.0 / 3.0);
  const Spectrum fs = dft(f, d);
  for (TikhonovReg reg : {TikhonovReg::identity, TikhonovReg::gradient}) {
    const double lambda = 0.05;
    std::vector<float> chi(f.size());
    tikhonov(f.data(), nullptr, d, vox, b0, lambda, reg, 1.0 / 3.0, 0, chi.data());
    Spectrum s = fs;
    for (int64_t k = 0; k < d.numel(); ++k) {
      const double gamma = reg == TikhonovReg::identity ? 1.0 : grad_sq(d, k, vox);
      s[k] *= dk[k] / (dk[k] * dk[k] + lambda * gamma);
    }
    CHECK(rel_err(chi, idft_real(s, d)) < 1e-4);
  }
}

TEST_CASE("Tikhonov with padding equals the unpadded result on the padded field", "[inversion]") {
  const Dims3 d{4, 6, 5};
  const std::vector<float> f = random_volume(d, 3);
  const Dims3 g = d.padded(2);
  std::vector<float> fp(static_cast<size_t>(g.numel()), 0.0f);
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x)
        fp[static_cast<size_t>(((z + 2) * g.ny + y + 2) * g.nx + x + 2)] =
            f[static_cast<size_t>((z * d.ny + y) * d.nx + x)];
  std::vector<float> chi(f.size()), chip(fp.size());
  tikhonov(f.data(), nullptr, d, {1, 1, 1}, kBz, 0.02, TikhonovReg::gradient, 1.0 / 3.0, 2,
           chi.data());
  tikhonov(fp.data(), nullptr, g, {1, 1, 1}, kBz, 0.02, TikhonovReg::gradient, 1.0 / 3.0, 0,
           chip.data());
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x)
        CHECK(chi[static_cast<size_t>((z * d.ny + y) * d.nx + x)] ==
              Approx(chip[static_cast<size_t>(((z + 2) * g.ny + y + 2) * g.nx + x + 2)])
                  .margin(1e-6));
  CHECK_THROWS_AS(tikhonov_reg_from_name("laplacian"), Error);
  CHECK_THROWS_AS(tikhonov(f.data(), nullptr, d, {1, 1, 1}, kBz, 0.0, TikhonovReg::identity,
                           1.0 / 3.0, 0, chi.data()),
                  Error);
}

TEST_CASE("TV-ADMM decreases its objective monotonically and beats TKD", "[inversion]") {
  const Dims3 d{16, 16, 16};
  const Vec3 vox{1.0, 1.0, 1.0};
  const std::vector<float> truth = phantom(d);
  std::vector<float> f(truth.size());
  forward_field(truth.data(), d, vox, kBz, 1.0 / 3.0, 0, f.data());
  TvOptions opt;
  opt.iterations = 40;
  opt.tolerance = 0.0;
  std::vector<float> chi(f.size());
  std::vector<double> obj;
  const int its = tv_admm(f.data(), nullptr, d, vox, kBz, opt, 1.0 / 3.0, 0, chi.data(), &obj);
  CHECK(its == 40);
  REQUIRE(obj.size() == 40);
  for (size_t i = 1; i < obj.size(); ++i) {
    INFO("iteration " << i << ": " << obj[i - 1] << " -> " << obj[i]);
    CHECK(obj[i] <= obj[i - 1] * (1.0 + 1e-6));
  }
  CHECK(obj.back() < obj.front());
  CHECK(
      obj.back() ==
      Approx(tv_objective(chi.data(), f.data(), d, vox, kBz, opt.lambda, 1.0 / 3.0)).epsilon(1e-5));
  std::vector<float> chi_tkd(f.size());
  tkd(f.data(), d, vox, kBz, 0.19, 1.0 / 3.0, 0, chi_tkd.data());
  const Metrics mtv = compute_metrics(chi.data(), truth.data(), nullptr, d.nz, d.ny, d.nx, vox);
  const Metrics mtkd =
      compute_metrics(chi_tkd.data(), truth.data(), nullptr, d.nz, d.ny, d.nx, vox);
  CHECK(mtv.nrmse < mtkd.nrmse);

  // The default tolerance stops early; the mask zeroes the outside.
  std::vector<uint8_t> mask(f.size(), 1);
  mask[0] = 0;
  const int early =
      tv_admm(f.data(), mask.data(), d, vox, kBz, TvOptions{}, 1.0 / 3.0, 2, chi.data());
  CHECK(early < kTvIterations);
  CHECK(chi[0] == 0.0f);
}

TEST_CASE("CG refinement decreases its objective and reaches the closed form", "[inversion]") {
  // Odd sizes: with an oblique B0 a Nyquist plane would make D(k) non-Hermitian.
  const Dims3 d{5, 5, 7};
  const Vec3 vox{1.0, 1.0, 1.2}, b0{0.2, 0.0, 1.0};
  const std::vector<float> f = random_volume(d, 4), net = random_volume(d, 5);
  RefineOptions opt;
  opt.lambda = 0.03;
  opt.iterations = 60;
  std::vector<float> chi(f.size());
  std::vector<double> obj;
  refine_chi(f.data(), net.data(), nullptr, d, vox, b0, opt, chi.data(), &obj);
  REQUIRE(obj.size() >= 2);
  for (size_t i = 1; i < obj.size(); ++i) CHECK(obj[i] <= obj[i - 1] * (1.0 + 1e-6));
  CHECK(obj.back() ==
        Approx(refine_objective(chi.data(), f.data(), net.data(), nullptr, d, vox, b0, opt))
            .epsilon(1e-4));

  // (D^2 + lambda) chi^ = D f^ + lambda net^, solved per bin (no mask, no padding).
  const std::vector<float> dk = dipole_kernel_full(d, vox, b0, opt.k0_value);
  const Spectrum fs = dft(f, d), ns = dft(net, d);
  Spectrum s(fs.size());
  for (size_t k = 0; k < s.size(); ++k)
    s[k] = (static_cast<double>(dk[k]) * fs[k] + opt.lambda * ns[k]) /
           (static_cast<double>(dk[k]) * dk[k] + opt.lambda);
  CHECK(rel_err(chi, idft_real(s, d)) < 1e-3);

  // With net = 0 the fixed point is identity Tikhonov with the same lambda.
  const std::vector<float> zero(f.size(), 0.0f);
  refine_chi(f.data(), zero.data(), nullptr, d, vox, b0, opt, chi.data());
  std::vector<float> tik(f.size());
  tikhonov(f.data(), nullptr, d, vox, b0, opt.lambda, TikhonovReg::identity, opt.k0_value, 0,
           tik.data());
  std::vector<double> tikd(tik.begin(), tik.end());
  CHECK(rel_err(chi, tikd) < 1e-3);

  // With a mask and padding the objective still decreases; 0 iterations is a copy.
  std::vector<uint8_t> mask(f.size(), 1);
  for (size_t i = 0; i < mask.size(); i += 3) mask[i] = 0;
  opt.pad = 2;
  opt.iterations = 5;
  refine_chi(f.data(), net.data(), mask.data(), d, vox, b0, opt, chi.data(), &obj);
  REQUIRE(obj.size() == 6);
  for (size_t i = 1; i < obj.size(); ++i) CHECK(obj[i] < obj[i - 1]);
  opt.iterations = 0;
  refine_chi(f.data(), net.data(), mask.data(), d, vox, b0, opt, chi.data());
  CHECK(chi == net);
}

TEST_CASE("the refinement weight follows the field's noise", "[inversion]") {
  CHECK(refine_lambda_for_noise(0.002) == Approx(kRefineLambda));  // the training noise
  CHECK(refine_lambda_for_noise(0.0) == kRefineLambda);            // never below the floor
  CHECK(refine_lambda_for_noise(0.001) == kRefineLambda);
  CHECK(refine_lambda_for_noise(0.005) == Approx(0.0625));  // (0.005 / 0.02)^2
  CHECK(refine_lambda_for_noise(0.01) == Approx(0.25));
}

namespace {

// J_TV of core/qsm/refine.h with no mask and no padding, from independent parts:
// TV-ADMM's objective (1/2 ||D chi - f||^2 + alpha TV) plus the prior.
double tv_refine_objective(const std::vector<float>& chi, const std::vector<float>& f,
                           const std::vector<float>& net, const Dims3& d, const Vec3& vox,
                           const Vec3& b0, const RefineOptions& opt) {
  double prior = 0.0;
  for (size_t i = 0; i < chi.size(); ++i)
    prior += (static_cast<double>(chi[i]) - net[i]) * (static_cast<double>(chi[i]) - net[i]);
  return tv_objective(chi.data(), f.data(), d, vox, b0, opt.tv, opt.k0_value) +
         0.5 * opt.lambda * prior;
}

}  // namespace

TEST_CASE("TV refinement reaches the minimum of its objective", "[inversion]") {
  const Dims3 d{5, 5, 7};
  const Vec3 vox{1.0, 1.0, 1.2}, b0{0.2, 0.0, 1.0};
  const std::vector<float> f = random_volume(d, 14), net = random_volume(d, 15);
  RefineOptions opt;
  opt.lambda = 0.03;
  opt.tv = 2e-3;
  opt.iterations = 400;
  std::vector<float> chi(f.size());
  std::vector<double> obj;
  refine_chi(f.data(), net.data(), nullptr, d, vox, b0, opt, chi.data(), &obj);
  REQUIRE(obj.size() == 401);
  const double j = tv_refine_objective(chi, f, net, d, vox, b0, opt);
  CHECK(obj.front() == Approx(tv_refine_objective(net, f, net, d, vox, b0, opt)).epsilon(1e-5));
  CHECK(obj.back() == Approx(j).epsilon(1e-4));
  CHECK(j < obj.front());

  // No other point does better: not the CG refinement's (TV-free) minimiser,
  // and no small step away in any of a set of random directions.
  RefineOptions cg = opt;
  cg.tv = 0.0;
  cg.iterations = 100;
  std::vector<float> chi_cg(f.size());
  refine_chi(f.data(), net.data(), nullptr, d, vox, b0, cg, chi_cg.data());
  CHECK(j < tv_refine_objective(chi_cg, f, net, d, vox, b0, opt));
  for (uint64_t key = 100; key < 120; ++key) {
    const std::vector<float> dir = random_volume(d, key);
    for (float step : {1e-2f, -1e-2f}) {
      std::vector<float> moved = chi;
      for (size_t i = 0; i < moved.size(); ++i) moved[i] += step * dir[i];
      CHECK(tv_refine_objective(moved, f, net, d, vox, b0, opt) > j * (1.0 - 1e-5));
    }
  }
}

TEST_CASE("TV refinement: tiny alpha is the CG refinement, padding is a zero-masked border",
          "[inversion]") {
  const Dims3 d{5, 5, 7};
  const Vec3 vox{1.0, 1.0, 1.2}, b0{0.2, 0.0, 1.0};
  const std::vector<float> f = random_volume(d, 24), net = random_volume(d, 25);
  std::vector<uint8_t> mask(f.size(), 1);
  for (size_t i = 0; i < mask.size(); i += 3) mask[i] = 0;

  // alpha -> 0: half of the CG objective, the same minimiser (mask, no padding).
  RefineOptions opt;
  opt.lambda = 0.05;
  opt.iterations = 100;
  std::vector<float> chi_cg(f.size()), chi_tv(f.size());
  refine_chi(f.data(), net.data(), mask.data(), d, vox, b0, opt, chi_cg.data());
  opt.tv = 1e-9;
  opt.iterations = 600;
  refine_chi(f.data(), net.data(), mask.data(), d, vox, b0, opt, chi_tv.data());
  CHECK(rel_err(chi_tv, std::vector<double>(chi_cg.begin(), chi_cg.end())) < 2e-3);

  // pad p is the same problem as pad 0 on the inputs bordered by p zeros,
  // with the border outside the mask.
  opt.tv = 3e-3;
  opt.iterations = 12;
  opt.pad = 2;
  refine_chi(f.data(), net.data(), mask.data(), d, vox, b0, opt, chi_tv.data());
  const Dims3 g = d.padded(opt.pad);
  std::vector<float> fp(static_cast<size_t>(g.numel()), 0.0f), np = fp, out = fp;
  std::vector<uint8_t> mp(fp.size(), 0);
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x) {
        const auto i = static_cast<size_t>((z * d.ny + y) * d.nx + x);
        const auto p = static_cast<size_t>(((z + 2) * g.ny + y + 2) * g.nx + x + 2);
        fp[p] = f[i];
        np[p] = net[i];
        mp[p] = mask[i];
      }
  RefineOptions unpadded = opt;
  unpadded.pad = 0;
  refine_chi(fp.data(), np.data(), mp.data(), g, vox, b0, unpadded, out.data());
  double worst = 0.0;
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x)
        worst = std::max(worst,
                         static_cast<double>(std::fabs(
                             chi_tv[static_cast<size_t>((z * d.ny + y) * d.nx + x)] -
                             out[static_cast<size_t>(((z + 2) * g.ny + y + 2) * g.nx + x + 2)])));
  CHECK(worst < 1e-7);

  opt.tv = -1.0;
  CHECK_THROWS_AS(refine_chi(f.data(), net.data(), nullptr, d, vox, b0, opt, chi_tv.data()), Error);
  opt.tv = std::nan("");
  CHECK_THROWS_AS(refine_chi(f.data(), net.data(), nullptr, d, vox, b0, opt, chi_tv.data()), Error);
  // The solver runs in float: weights a float cannot carry are refused.
  opt.tv = 1e35;
  CHECK_THROWS_AS(refine_chi(f.data(), net.data(), nullptr, d, vox, b0, opt, chi_tv.data()), Error);
  opt.tv = 3e-3;
  opt.lambda = 1e-35;
  CHECK_THROWS_AS(refine_chi(f.data(), net.data(), nullptr, d, vox, b0, opt, chi_tv.data()), Error);
}
