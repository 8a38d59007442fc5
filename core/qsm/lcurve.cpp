// The L-curve corner (core/qsm/lcurve.h).
#include "core/qsm/lcurve.h"

#include <cmath>

#include "core/error.h"

namespace dq {

namespace {

bool inside(const uint8_t* mask, size_t i) {
  return mask == nullptr || mask[i] != 0;
}

double residual_norm(const float* chi, const float* field, const uint8_t* mask, const Dims3& dims,
                     const Vec3& voxel_mm, const Vec3& b0_dir, double k0_value, int64_t pad) {
  std::vector<float> model(static_cast<size_t>(dims.numel()));
  forward_field(chi, dims, voxel_mm, b0_dir, k0_value, pad, model.data());
  double s = 0;
  for (size_t i = 0; i < model.size(); ++i)
    if (inside(mask, i)) s += double(model[i] - field[i]) * double(model[i] - field[i]);
  return std::sqrt(s);
}

// sum over axes of |G_i chi|^p inside the grid and the mask (both ends of
// a difference inside), p = 1 or 2: TV and the squared gradient norm.
double gradient_norm(const float* chi, const uint8_t* mask, const Dims3& d, const Vec3& voxel_mm,
                     int p) {
  double s = 0;
  const int64_t step[3] = {1, d.nx, d.nx * d.ny};  // x, y, z
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      for (int64_t x = 0; x < d.nx; ++x) {
        const int64_t i = (z * d.ny + y) * d.nx + x;
        if (!inside(mask, size_t(i))) continue;
        const bool has[3] = {x + 1 < d.nx, y + 1 < d.ny, z + 1 < d.nz};
        for (int a = 0; a < 3; ++a) {
          if (!has[a] || !inside(mask, size_t(i + step[a]))) continue;
          const double g = double(chi[i + step[a]] - chi[i]) / voxel_mm[size_t(a)];
          s += p == 1 ? std::fabs(g) : g * g;
        }
      }
  return p == 1 ? s : std::sqrt(s);
}

double l2_norm(const float* chi, const uint8_t* mask, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i)
    if (inside(mask, size_t(i))) s += double(chi[i]) * double(chi[i]);
  return std::sqrt(s);
}

}  // namespace

size_t lcurve_corner(const std::vector<LCurvePoint>& pts, std::vector<double>* curvature) {
  const size_t n = pts.size();
  if (n < 3) fail("L-curve: needs at least 3 lambdas, got ", n);
  std::vector<double> t(n), rho(n), eta(n);
  for (size_t i = 0; i < n; ++i) {
    if (!(pts[i].lambda > 0) || !(pts[i].residual > 0) || !(pts[i].regulariser > 0))
      fail("L-curve: point ", i, " (lambda ", pts[i].lambda, ") has a zero or negative norm");
    if (i > 0 && !(pts[i].lambda > pts[i - 1].lambda))
      fail("L-curve: lambdas must increase, got ", pts[i - 1].lambda, " then ", pts[i].lambda);
    t[i] = std::log(pts[i].lambda);
    rho[i] = std::log(pts[i].residual);
    eta[i] = std::log(pts[i].regulariser);
  }
  std::vector<double> k(n, 0.0);
  size_t best = 1;
  for (size_t i = 1; i + 1 < n; ++i) {
    // Three-point derivatives on a non-uniform grid (h1 back, h2 forward).
    const double h1 = t[i] - t[i - 1], h2 = t[i + 1] - t[i];
    auto d1 = [&](const std::vector<double>& f) {
      return (-h2 / (h1 * (h1 + h2))) * f[i - 1] + ((h2 - h1) / (h1 * h2)) * f[i] +
             (h1 / (h2 * (h1 + h2))) * f[i + 1];
    };
    auto d2 = [&](const std::vector<double>& f) {
      return 2.0 * (f[i - 1] / (h1 * (h1 + h2)) - f[i] / (h1 * h2) + f[i + 1] / (h2 * (h1 + h2)));
    };
    const double r1 = d1(rho), r2 = d2(rho), e1 = d1(eta), e2 = d2(eta);
    const double den = std::pow(r1 * r1 + e1 * e1, 1.5);
    k[i] = den > 0 ? (r1 * e2 - r2 * e1) / den : 0.0;
    if (k[i] > k[best]) best = i;
  }
  if (curvature) *curvature = k;
  return best;
}

std::vector<double> log_spaced(double lo, double hi, int count) {
  if (!(lo > 0) || !(hi > lo) || count < 3)
    fail("L-curve: a lambda grid needs 0 < lo < hi and >= 3 points, got ", lo, " .. ", hi, " (",
         count, ")");
  std::vector<double> v(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i)
    v[size_t(i)] = std::exp(std::log(lo) + (std::log(hi) - std::log(lo)) * i / (count - 1));
  return v;
}

std::vector<double> tikhonov_lcurve_lambdas() {
  return log_spaced(1e-4, 1.0, 13);
}
std::vector<double> tv_lcurve_lambdas() {
  return log_spaced(1e-5, 1e-2, 7);
}

LCurveResult tikhonov_lcurve(const float* field, const uint8_t* mask, const Dims3& dims,
                             const Vec3& voxel_mm, const Vec3& b0_dir, TikhonovReg reg,
                             double k0_value, int64_t pad, const std::vector<double>& lambdas) {
  LCurveResult out;
  std::vector<std::vector<float>> sols;
  for (double l : lambdas) {
    std::vector<float> chi(static_cast<size_t>(dims.numel()));
    tikhonov(field, mask, dims, voxel_mm, b0_dir, l, reg, k0_value, pad, chi.data());
    LCurvePoint p;
    p.lambda = l;
    p.residual = residual_norm(chi.data(), field, mask, dims, voxel_mm, b0_dir, k0_value, pad);
    p.regulariser = reg == TikhonovReg::identity
                        ? l2_norm(chi.data(), mask, dims.numel())
                        : gradient_norm(chi.data(), mask, dims, voxel_mm, 2);
    out.points.push_back(p);
    sols.push_back(std::move(chi));
  }
  out.corner = lcurve_corner(out.points);
  out.chi = std::move(sols[out.corner]);
  return out;
}

LCurveResult tv_lcurve(const float* field, const uint8_t* mask, const Dims3& dims,
                       const Vec3& voxel_mm, const Vec3& b0_dir, const TvOptions& opt,
                       double rho_over_lambda, double k0_value, int64_t pad,
                       const std::vector<double>& lambdas) {
  LCurveResult out;
  std::vector<std::vector<float>> sols;
  for (double l : lambdas) {
    TvOptions o = opt;
    o.lambda = l;
    o.rho = rho_over_lambda * l;
    std::vector<float> chi(static_cast<size_t>(dims.numel()));
    tv_admm(field, mask, dims, voxel_mm, b0_dir, o, k0_value, pad, chi.data());
    LCurvePoint p;
    p.lambda = l;
    p.residual = residual_norm(chi.data(), field, mask, dims, voxel_mm, b0_dir, k0_value, pad);
    p.regulariser = gradient_norm(chi.data(), mask, dims, voxel_mm, 1);
    out.points.push_back(p);
    sols.push_back(std::move(chi));
  }
  out.corner = lcurve_corner(out.points);
  out.chi = std::move(sols[out.corner]);
  return out;
}

}  // namespace dq
