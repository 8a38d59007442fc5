#include "core/qsm/inversion.h"

#include <cmath>
#include <cstring>

#include "core/error.h"

namespace dq {

namespace {

constexpr double kPi = 3.14159265358979323846;

void check_voxel(const Vec3& voxel_mm) {
  for (double v : voxel_mm)
    if (!(v > 0.0)) fail("voxel size must be positive, got ", v, " mm");
}

void apply_mask(const uint8_t* mask, int64_t n, float* chi) {
  if (mask == nullptr) return;
  for (int64_t i = 0; i < n; ++i)
    if (mask[i] == 0) chi[i] = 0.0f;
}

// Flat index of the periodic neighbour of (z, y, x) one step forward
// (step = +1) or back (-1) along `axis` (0 = x, 1 = y, 2 = z).
inline int64_t neighbour(const Dims3& g, int64_t z, int64_t y, int64_t x, int axis, int step) {
  auto wrap = [step](int64_t i, int64_t n) {
    return step > 0 ? (i + 1 == n ? 0 : i + 1) : (i == 0 ? n - 1 : i - 1);
  };
  if (axis == 0) return (z * g.ny + y) * g.nx + wrap(x, g.nx);
  if (axis == 1) return (z * g.ny + wrap(y, g.ny)) * g.nx + x;
  return (wrap(z, g.nz) * g.ny + y) * g.nx + x;
}

// Forward periodic difference along `axis` (0 = x, 1 = y, 2 = z) in ppm/mm.
void grad_axis(const float* x, const Dims3& g, int axis, float inv_h, float* out) {
  for (int64_t z = 0; z < g.nz; ++z)
    for (int64_t y = 0; y < g.ny; ++y)
      for (int64_t xx = 0; xx < g.nx; ++xx) {
        const int64_t i = (z * g.ny + y) * g.nx + xx;
        out[i] = (x[neighbour(g, z, y, xx, axis, +1)] - x[i]) * inv_h;
      }
}

// acc += G_axis^T v, with G^T v(r) = (v(r - e) - v(r)) / h (the adjoint of grad_axis).
void add_grad_adjoint(const float* v, const Dims3& g, int axis, float inv_h, float* acc) {
  for (int64_t z = 0; z < g.nz; ++z)
    for (int64_t y = 0; y < g.ny; ++y)
      for (int64_t xx = 0; xx < g.nx; ++xx) {
        const int64_t i = (z * g.ny + y) * g.nx + xx;
        acc[i] += (v[neighbour(g, z, y, xx, axis, -1)] - v[i]) * inv_h;
      }
}

}  // namespace

void pad_into(const float* in, const Dims3& dims, int64_t pad, float* out) {
  const Dims3 g = dims.padded(pad);
  if (pad > 0) std::memset(out, 0, sizeof(float) * static_cast<size_t>(g.numel()));
  const size_t row = sizeof(float) * static_cast<size_t>(dims.nx);
  for (int64_t z = 0; z < dims.nz; ++z)
    for (int64_t y = 0; y < dims.ny; ++y)
      std::memcpy(out + ((z + pad) * g.ny + (y + pad)) * g.nx + pad,
                  in + (z * dims.ny + y) * dims.nx, row);
}

void crop_from(const float* in, const Dims3& dims, int64_t pad, float* out) {
  const Dims3 g = dims.padded(pad);
  const size_t row = sizeof(float) * static_cast<size_t>(dims.nx);
  for (int64_t z = 0; z < dims.nz; ++z)
    for (int64_t y = 0; y < dims.ny; ++y)
      std::memcpy(out + (z * dims.ny + y) * dims.nx,
                  in + ((z + pad) * g.ny + (y + pad)) * g.nx + pad, row);
}

TikhonovReg tikhonov_reg_from_name(const std::string& name) {
  if (name == "identity") return TikhonovReg::identity;
  if (name == "gradient") return TikhonovReg::gradient;
  fail("unknown Tikhonov regularisation '", name, "' (expected identity or gradient)");
}

std::vector<float> gradient_symbol_sq(const Dims3& dims, const Vec3& voxel_mm) {
  check_voxel(voxel_mm);
  const int64_t hx = dims.nx / 2 + 1;
  std::vector<float> s(static_cast<size_t>(dims.nz * dims.ny * hx));
  size_t at = 0;
  for (int64_t z = 0; z < dims.nz; ++z) {
    const double sz = std::sin(kPi * static_cast<double>(z) / dims.nz);
    const double gz = 4.0 * sz * sz / (voxel_mm[2] * voxel_mm[2]);
    for (int64_t y = 0; y < dims.ny; ++y) {
      const double sy = std::sin(kPi * static_cast<double>(y) / dims.ny);
      const double gy = 4.0 * sy * sy / (voxel_mm[1] * voxel_mm[1]);
      for (int64_t x = 0; x < hx; ++x) {
        // sin^2(pi m / n) is the same for bin i and its fftfreq label i - n.
        const double sx = std::sin(kPi * static_cast<double>(x) / dims.nx);
        s[at++] = static_cast<float>(gz + gy + 4.0 * sx * sx / (voxel_mm[0] * voxel_mm[0]));
      }
    }
  }
  return s;
}

std::vector<float> tikhonov_inverse_kernel(const Dims3& dims, const Vec3& voxel_mm,
                                           const Vec3& b0_dir, double lambda, TikhonovReg reg,
                                           double k0_value) {
  if (!(lambda > 0.0)) fail("Tikhonov lambda must be positive, got ", lambda);
  std::vector<float> d = dipole_kernel(dims, voxel_mm, b0_dir, k0_value);
  std::vector<float> gamma;
  if (reg == TikhonovReg::gradient) gamma = gradient_symbol_sq(dims, voxel_mm);
  for (size_t i = 0; i < d.size(); ++i) {
    const double di = d[i];
    const double den = di * di + lambda * (reg == TikhonovReg::gradient ? gamma[i] : 1.0);
    d[i] = den > 0.0 ? static_cast<float>(di / den) : 0.0f;
  }
  return d;
}

void tikhonov(const float* field, const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
              const Vec3& b0_dir, double lambda, TikhonovReg reg, double k0_value, int64_t pad,
              float* chi) {
  if (pad < 0) fail("Tikhonov padding must be >= 0, got ", pad);
  PaddedFilter(dims, pad,
               tikhonov_inverse_kernel(dims.padded(pad), voxel_mm, b0_dir, lambda, reg, k0_value))
      .apply(field, chi);
  apply_mask(mask, dims.numel(), chi);
}

double tv_objective(const float* chi, const float* field, const Dims3& g, const Vec3& voxel_mm,
                    const Vec3& b0_dir, double lambda, double k0_value) {
  check_voxel(voxel_mm);
  const size_t n = static_cast<size_t>(g.numel());
  std::vector<float> tmp(n);
  forward_field(chi, g, voxel_mm, b0_dir, k0_value, 0, tmp.data());
  double data = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double r = static_cast<double>(tmp[i]) - field[i];
    data += r * r;
  }
  double tv = 0.0;
  for (int axis = 0; axis < 3; ++axis) {
    grad_axis(chi, g, axis, static_cast<float>(1.0 / voxel_mm[static_cast<size_t>(axis)]),
              tmp.data());
    for (size_t i = 0; i < n; ++i) tv += std::fabs(tmp[i]);
  }
  return 0.5 * data + lambda * tv;
}

void TvOptions::validate(int64_t pad) const {
  if (pad < 0) fail("TV padding must be >= 0, got ", pad);
  if (!(lambda > 0.0)) fail("TV lambda must be positive, got ", lambda);
  if (!(rho > 0.0)) fail("TV rho must be positive, got ", rho);
  if (iterations < 1) fail("TV needs at least 1 iteration, got ", iterations);
  if (!(tolerance >= 0.0)) fail("TV tolerance must be >= 0, got ", tolerance);
}

int tv_admm(const float* field, const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
            const Vec3& b0_dir, const TvOptions& opt, double k0_value, int64_t pad, float* chi,
            std::vector<double>* objective) {
  opt.validate(pad);
  check_voxel(voxel_mm);

  const Dims3 g = dims.padded(pad);
  const size_t n = static_cast<size_t>(g.numel());
  const size_t nh = static_cast<size_t>(g.half_numel());
  const std::vector<float> d = dipole_kernel(g, voxel_mm, b0_dir, k0_value);
  const std::vector<float> g2 = gradient_symbol_sq(g, voxel_mm);
  const float rho = static_cast<float>(opt.rho);
  const float thresh = static_cast<float>(opt.lambda / opt.rho);
  const float inv_h[3] = {static_cast<float>(1.0 / voxel_mm[0]),
                          static_cast<float>(1.0 / voxel_mm[1]),
                          static_cast<float>(1.0 / voxel_mm[2])};

  Fft3 fft(g, fft_threads());
  std::vector<float> fp(n);  // padded field, for the objective
  pad_into(field, dims, pad, fp.data());
  std::memcpy(fft.real(), fp.data(), sizeof(float) * n);
  fft.forward();
  // D f^ and 1 / (D^2 + rho |G|^2) stay fixed across iterations.
  std::vector<std::complex<float>> dfh(nh);
  std::vector<float> inv_den(nh);
  for (size_t k = 0; k < nh; ++k) {
    dfh[k] = fft.spectrum()[k] * d[k];
    const float den = d[k] * d[k] + rho * g2[k];
    inv_den[k] = den > 0.0f ? 1.0f / den : 0.0f;
  }

  std::vector<float> x(n, 0.0f), x_prev(n), w(n), grad(n);
  std::vector<std::vector<float>> z(3, std::vector<float>(n, 0.0f)), u = z;
  if (objective) objective->clear();
  int it = 0;
  while (it < opt.iterations) {
    ++it;
    // w = G^T (z - u); chi^ = (D f^ + rho w^) / (D^2 + rho |G|^2).
    std::fill(w.begin(), w.end(), 0.0f);
    for (int a = 0; a < 3; ++a) {
      for (size_t i = 0; i < n; ++i) grad[i] = z[a][i] - u[a][i];
      add_grad_adjoint(grad.data(), g, a, inv_h[a], w.data());
    }
    std::memcpy(fft.real(), w.data(), sizeof(float) * n);
    fft.forward();
    std::complex<float>* s = fft.spectrum();
    for (size_t k = 0; k < nh; ++k) s[k] = (dfh[k] + rho * s[k]) * inv_den[k];
    fft.inverse();
    x_prev.swap(x);
    std::memcpy(x.data(), fft.real(), sizeof(float) * n);

    // z = shrink(G chi + u, lambda / rho); u += G chi - z.
    for (int a = 0; a < 3; ++a) {
      grad_axis(x.data(), g, a, inv_h[a], grad.data());
      float* za = z[a].data();
      float* ua = u[a].data();
      for (size_t i = 0; i < n; ++i) {
        const float v = grad[i] + ua[i];
        const float zi = v > thresh ? v - thresh : (v < -thresh ? v + thresh : 0.0f);
        za[i] = zi;
        ua[i] = v - zi;
      }
    }
    if (objective)
      objective->push_back(
          tv_objective(x.data(), fp.data(), g, voxel_mm, b0_dir, opt.lambda, k0_value));

    double dn = 0.0, xn = 0.0;
    for (size_t i = 0; i < n; ++i) {
      const double dv = static_cast<double>(x[i]) - x_prev[i];
      dn += dv * dv;
      xn += static_cast<double>(x[i]) * x[i];
    }
    if (it > 1 && xn > 0.0 && std::sqrt(dn / xn) < opt.tolerance) break;
  }
  crop_from(x.data(), dims, pad, chi);
  apply_mask(mask, dims.numel(), chi);
  return it;
}

}  // namespace dq
