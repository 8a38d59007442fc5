// Image metrics (core/qsm/metrics.h) against values worked out by hand on tiny
// arrays, the LoG filter of HFEN against a direct spatial convolution, and
// per-label means.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/nn/philox.h"
#include "core/qsm/dipole.h"
#include "core/qsm/metrics.h"

using namespace dq;

namespace {

const std::array<double, 3> kIso{1.0, 1.0, 1.0};

// SSIM of one window from its moments (population statistics).
double ssim_from(double mx, double my, double vx, double vy, double cxy, double c1, double c2) {
  return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2));
}

}  // namespace

TEST_CASE("NRMSE, dNRMSE, correlation, error moments and pSNR by hand", "[metrics]") {
  // t = [1 2 3 4], r = [1 2 3 5] on a 1x1x4 grid.
  const std::vector<float> t{1, 2, 3, 4}, r{1, 2, 3, 5};
  const Metrics m = compute_metrics(r.data(), t.data(), nullptr, 1, 1, 4, kIso);
  // Centred: tc = [-1.5 -0.5 0.5 1.5], rc = [-1.75 -0.75 0.25 2.25];
  // ||rc - tc||^2 = 3 * 0.0625 + 0.5625 = 0.75, ||tc||^2 = 5.
  CHECK(m.nrmse == Approx(100.0 * std::sqrt(0.75 / 5.0)));
  // srt = rc.tc = 6.5, srr = 8.75; slope a = 6.5 / 5 = 1.3;
  // ||rc / a - tc||^2 = 8.75 / 1.69 - 2 * 6.5 / 1.3 + 5.
  CHECK(m.dnrmse == Approx(100.0 * std::sqrt((8.75 / 1.69 - 10.0 + 5.0) / 5.0)));
  CHECK(m.corr == Approx(6.5 / std::sqrt(8.75 * 5.0)));
  // e = [0 0 0 1]: mean 1/4, population std sqrt(1/4 - 1/16).
  CHECK(m.err_mean == Approx(0.25));
  CHECK(m.err_std == Approx(std::sqrt(0.1875)));
  // range 3, RMSE 1/2: 20 log10(6).
  CHECK(m.psnr == Approx(20.0 * std::log10(6.0)));
}

TEST_CASE("a perfect prediction scores perfectly; a scaled one is undone by detrending",
          "[metrics]") {
  const Dims3 d{6, 7, 8};
  std::vector<float> t(static_cast<size_t>(d.numel())), r2(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    t[i] = 0.2f * (philox_uniform(11, i) - 0.5f);
    r2[i] = 2.0f * t[i] + 0.05f;  // a = 2, b = 0.05
  }
  const Metrics same = compute_metrics(t.data(), t.data(), nullptr, d.nz, d.ny, d.nx, kIso);
  CHECK(same.nrmse == Approx(0.0).margin(1e-9));
  CHECK(same.dnrmse == Approx(0.0).margin(1e-6));
  CHECK(same.hfen == Approx(0.0).margin(1e-9));
  CHECK(same.xsim == Approx(1.0));
  CHECK(same.ssim == Approx(1.0));
  CHECK(same.corr == Approx(1.0));
  CHECK(std::isinf(same.psnr));

  const Metrics sc = compute_metrics(r2.data(), t.data(), nullptr, d.nz, d.ny, d.nx, kIso);
  CHECK(sc.nrmse == Approx(100.0).epsilon(1e-5));  // ||2 tc - tc|| / ||tc||
  CHECK(sc.dnrmse == Approx(0.0).margin(1e-3));
  CHECK(sc.corr == Approx(1.0));
  // HFEN on the pure scaling (LoG is linear): an offset would not cancel
  // near the zero-padded grid edges, which on this grid is everywhere.
  std::vector<float> r2n(t.size());
  for (size_t i = 0; i < t.size(); ++i) r2n[i] = 2.0f * t[i];
  const Metrics s2 = compute_metrics(r2n.data(), t.data(), nullptr, d.nz, d.ny, d.nx, kIso);
  CHECK(s2.hfen == Approx(100.0).epsilon(1e-4));
}

TEST_CASE("XSIM and SSIM by hand where every window covers the whole grid", "[metrics]") {
  // A 1x1x3 grid: the 5^3 window clipped at the edges is all 3 voxels for
  // every voxel, so each local SSIM equals the global one.
  const std::vector<float> t{0.0f, 0.1f, 0.2f}, r{0.0f, 0.1f, 0.3f};
  const Metrics m = compute_metrics(r.data(), t.data(), nullptr, 1, 1, 3, kIso);
  // Means 0.1 and 0.4/3; variances (0.01 + 0 + 0.01) / 3 and
  // (0.0177... + 0.0011... + 0.0277...) / 3 computed from the deviations
  // below; covariance (0.1 * 0.4/3 + 0.1 * 0.5/3) / 3 = 0.01.
  const double mt = 0.1, mr = 0.4 / 3.0;
  const double dr0 = -0.4 / 3.0, dr1 = -0.1 / 3.0, dr2 = 0.5 / 3.0;
  const double vt = 0.02 / 3.0, vr = (dr0 * dr0 + dr1 * dr1 + dr2 * dr2) / 3.0;
  const double c = (-0.1 * dr0 + 0.1 * dr2) / 3.0;
  CHECK(m.xsim == Approx(ssim_from(mr, mt, vr, vt, c, 1e-4, 1e-6)).epsilon(1e-5));
  const double L = 0.2;  // reference range
  CHECK(m.ssim ==
        Approx(ssim_from(mr, mt, vr, vt, c, (0.01 * L) * (0.01 * L), (0.03 * L) * (0.03 * L)))
            .epsilon(1e-5));
}

TEST_CASE("the SSIM window is 5 voxels wide, clipped at the grid edges", "[metrics]") {
  // 1x1x7 grid: voxel 0's window is voxels 0..2, voxel 3's is 1..5.
  const std::vector<float> t{0.0f, 0.1f, 0.0f, 0.2f, 0.0f, 0.1f, 0.3f};
  const std::vector<float> r{0.1f, 0.1f, 0.0f, 0.1f, 0.0f, 0.2f, 0.3f};
  const Metrics m = compute_metrics(r.data(), t.data(), nullptr, 1, 1, 7, kIso);
  auto local = [&](int lo, int hi) {
    double mx = 0, my = 0, n = hi - lo + 1;
    for (int i = lo; i <= hi; ++i) mx += r[i] / n, my += t[i] / n;
    double vx = 0, vy = 0, cxy = 0;
    for (int i = lo; i <= hi; ++i) {
      vx += (r[i] - mx) * (r[i] - mx) / n;
      vy += (t[i] - my) * (t[i] - my) / n;
      cxy += (r[i] - mx) * (t[i] - my) / n;
    }
    return ssim_from(mx, my, vx, vy, cxy, 1e-4, 1e-6);
  };
  const double want = (local(0, 2) + local(0, 3) + local(0, 4) + local(1, 5) + local(2, 6) +
                       local(3, 6) + local(4, 6)) /
                      7.0;
  CHECK(m.xsim == Approx(want).epsilon(1e-4));
}

TEST_CASE("HFEN's LoG filter matches a direct spatial convolution", "[metrics]") {
  const Dims3 d{9, 10, 11};
  std::vector<float> t(static_cast<size_t>(d.numel())), r(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    t[i] = philox_uniform(21, i) - 0.5f;
    r[i] = t[i] + 0.3f * (philox_uniform(22, i) - 0.5f);
  }
  // The 15^3 kernel: normalised Gaussian (sigma 1.5) times (r^2 - 3 s^2) / s^4,
  // shifted to zero sum.
  const int h = 7;
  const double s2 = 2.25;
  std::vector<double> k;
  double gs = 0;
  for (int z = -h; z <= h; ++z)
    for (int y = -h; y <= h; ++y)
      for (int x = -h; x <= h; ++x) gs += std::exp(-(x * x + y * y + z * z) / (2 * s2));
  double ks = 0;
  for (int z = -h; z <= h; ++z)
    for (int y = -h; y <= h; ++y)
      for (int x = -h; x <= h; ++x) {
        const double r2 = x * x + y * y + z * z;
        k.push_back(std::exp(-r2 / (2 * s2)) / gs * (r2 - 3 * s2) / (s2 * s2));
        ks += k.back();
      }
  for (double& v : k) v -= ks / static_cast<double>(k.size());
  auto log_at = [&](const std::vector<float>& v, int64_t z, int64_t y, int64_t x) {
    double s = 0;
    for (int dz = -h; dz <= h; ++dz)
      for (int dy = -h; dy <= h; ++dy)
        for (int dx = -h; dx <= h; ++dx) {
          const int64_t zz = z - dz, yy = y - dy, xx = x - dx;
          if (zz < 0 || yy < 0 || xx < 0 || zz >= d.nz || yy >= d.ny || xx >= d.nx) continue;
          s += k[static_cast<size_t>(((dz + h) * 15 + dy + h) * 15 + dx + h)] *
               v[static_cast<size_t>((zz * d.ny + yy) * d.nx + xx)];
        }
    return s;
  };
  double num = 0, den = 0;
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x) {
        const double lt = log_at(t, z, y, x), lr = log_at(r, z, y, x);
        num += (lr - lt) * (lr - lt);
        den += lt * lt;
      }
  const Metrics m = compute_metrics(r.data(), t.data(), nullptr, d.nz, d.ny, d.nx, kIso);
  CHECK(m.hfen == Approx(100.0 * std::sqrt(num / den)).epsilon(1e-4));
}

TEST_CASE("statistics stay inside the mask", "[metrics]") {
  // Voxels 0..3 inside; voxel 4 holds garbage that must not count.
  const std::vector<float> t{1, 2, 3, 4, 100}, r{1, 2, 3, 5, -100};
  const std::vector<uint8_t> mask{1, 1, 1, 1, 0};
  const Metrics m = compute_metrics(r.data(), t.data(), mask.data(), 1, 1, 5, kIso);
  CHECK(m.nrmse == Approx(100.0 * std::sqrt(0.75 / 5.0)));
  CHECK(m.err_mean == Approx(0.25));
  CHECK(m.psnr == Approx(20.0 * std::log10(6.0)));

  const std::vector<uint8_t> none(5, 0);
  CHECK_THROWS_AS(compute_metrics(r.data(), t.data(), none.data(), 1, 1, 5, kIso), Error);
  const std::vector<float> flat(5, 1.0f);
  CHECK_THROWS_AS(compute_metrics(r.data(), flat.data(), nullptr, 1, 1, 5, kIso), Error);
}

TEST_CASE("per-label means skip the background and the outside of the mask", "[metrics]") {
  const std::vector<float> r{1, 2, 3, 4, 5, 6}, t{0, 0, 1, 1, 2, 9};
  const std::vector<int32_t> labels{0, 3, 3, 7, 7, 7};
  const std::vector<uint8_t> mask{1, 1, 1, 1, 1, 0};
  const std::vector<LabelMean> lm =
      label_means(r.data(), t.data(), labels.data(), mask.data(), 1, 1, 6);
  REQUIRE(lm.size() == 2);
  CHECK(lm[0].label == 3);
  CHECK(lm[0].voxels == 2);
  CHECK(lm[0].pred_mean == Approx(2.5));
  CHECK(lm[0].ref_mean == Approx(0.5));
  CHECK(lm[1].label == 7);
  CHECK(lm[1].voxels == 2);
  CHECK(lm[1].pred_mean == Approx(4.5));
  CHECK(lm[1].ref_mean == Approx(1.5));
  CHECK(lm[1].diff() == Approx(3.0));
}
