#include "core/qsm/refine.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/qsm/inversion.h"

namespace dq {

namespace {

// The CG vectors' loops, threaded; the sums in fixed blocks (core/parallel.h).
double dot(const std::vector<float>& a, const std::vector<float>& b) {
  return parallel_sum(static_cast<int64_t>(a.size()), [&](int64_t i0, int64_t i1) {
    double s = 0.0;
    for (int64_t i = i0; i < i1; ++i) s += static_cast<double>(a[i]) * b[i];
    return s;
  });
}
template <class F>
void for_each_voxel(int64_t n, const F& f) {
  parallel_for(n, kPointwiseGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) f(i);
  });
}

// The padded dipole convolution and its masked normal operator, sharing one filter.
struct DipoleOp {
  Dims3 dims;
  PaddedFilter filter;
  const uint8_t* mask;

  DipoleOp(const Dims3& d, const Vec3& voxel_mm, const Vec3& b0_dir, double k0, int64_t p,
           const uint8_t* m)
      : dims(d),
        filter(d, p, dipole_kernel(d.padded(p), voxel_mm, b0_dir, k0), /*threaded=*/true),
        mask(m) {}

  void apply(const float* in, float* out) { filter.apply(in, out); }
  void masked(float* v) const {
    if (!mask) return;
    for_each_voxel(dims.numel(), [&](int64_t i) {
      if (mask[i] == 0) v[i] = 0.0f;
    });
  }
  // out = D^H M D in + lambda in
  void normal(const float* in, double lambda, float* tmp, float* out) {
    apply(in, tmp);
    masked(tmp);
    apply(tmp, out);
    const float l = static_cast<float>(lambda);
    for_each_voxel(dims.numel(), [&](int64_t i) { out[i] += l * in[i]; });
  }
  // J(chi) given dchi = D chi (only its voxels inside the mask are read).
  template <class T>
  double objective_given(const T* dchi, const float* chi, const float* field, const float* chi_net,
                         double lambda) const {
    return parallel_sum(dims.numel(), [&](int64_t i0, int64_t i1) {
      double data = 0.0, prior = 0.0;
      for (int64_t i = i0; i < i1; ++i) {
        if (!mask || mask[i] != 0) {
          const double r = static_cast<double>(dchi[i]) - field[i];
          data += r * r;
        }
        const double p = static_cast<double>(chi[i]) - chi_net[i];
        prior += p * p;
      }
      return data + lambda * prior;
    });
  }
  double objective(const float* chi, const float* field, const float* chi_net, double lambda,
                   float* tmp) {
    apply(chi, tmp);
    return objective_given(tmp, chi, field, chi_net, lambda);
  }
};

void check(const RefineOptions& opt) {
  if (opt.iterations < 0) fail("refinement iterations must be >= 0, got ", opt.iterations);
  if (!(opt.lambda > 0.0)) fail("refinement lambda must be positive, got ", opt.lambda);
  if (opt.pad < 0) fail("refinement padding must be >= 0, got ", opt.pad);
  if (!(opt.tv >= 0.0) || !std::isfinite(opt.tv))
    fail("refinement TV weight must be a finite number >= 0, got ", opt.tv);
  // The TV refinement runs in float: its weights must stay normal floats
  // (rho_z = 100 alpha finite, lambda above FLT_MIN, or 1 / (D^2 + ...) is inf).
  if (opt.tv > 0.0 && !refine_tv_weight_ok(opt.tv))
    fail("refinement TV weight must be 0 or within [1e-30, 1e30], got ", opt.tv);
  if (opt.tv > 0.0 && !refine_tv_weight_ok(opt.lambda))
    fail("refinement lambda must be within [1e-30, 1e30] with TV, got ", opt.lambda);
}

// ---- The TV refinement's grid work. Rows of the padded grid g are
// r = z * g.ny + y, each g.nx voxels along x.

// The row one step (+1 or -1) from row r along y (axis 1) or z (axis 2), periodic.
int64_t neighbour_row(const Dims3& g, int64_t r, int axis, int step) {
  const int64_t z = r / g.ny, y = r % g.ny;
  if (axis == 1) return z * g.ny + (y + step + g.ny) % g.ny;
  return ((z + step + g.nz) % g.nz) * g.ny + y;
}

// d = the periodic forward difference of `a` along `axis` (0 = x, 1 = y,
// 2 = z) on row r, (a(r + e) - a(r)) / h, in ppm/mm.
void forward_difference_row(const float* a, const Dims3& g, int64_t r, int axis, float inv_h,
                            float* d) {
  const int64_t nx = g.nx;
  const float* row = a + r * nx;
  if (axis == 0) {
    for (int64_t i = 0; i + 1 < nx; ++i) d[i] = (row[i + 1] - row[i]) * inv_h;
    d[nx - 1] = (row[0] - row[nx - 1]) * inv_h;
    return;
  }
  const float* next = a + neighbour_row(g, r, axis, +1) * nx;
  for (int64_t i = 0; i < nx; ++i) d[i] = (next[i] - row[i]) * inv_h;
}

// acc += the adjoint of that difference on row r: (a(r - e) - a(r)) / h.
void add_adjoint_difference_row(const float* a, const Dims3& g, int64_t r, int axis, float inv_h,
                                float* acc) {
  const int64_t nx = g.nx;
  const float* row = a + r * nx;
  if (axis == 0) {
    acc[0] += (row[nx - 1] - row[0]) * inv_h;
    for (int64_t i = 1; i < nx; ++i) acc[i] += (row[i - 1] - row[i]) * inv_h;
    return;
  }
  const float* prev = a + neighbour_row(g, r, axis, -1) * nx;
  for (int64_t i = 0; i < nx; ++i) acc[i] += (prev[i] - row[i]) * inv_h;
}

// f(r, scratch) for every row r of g, rows shared between the threads, with
// a scratch row of g.nx floats per thread; returns the sum of f's results
// added in row order (the same on any thread count).
template <class F>
double sum_over_rows(const Dims3& g, const F& f) {
  const int64_t rows = g.nz * g.ny;
  std::vector<double> part(static_cast<size_t>(rows));
  parallel_for(rows, std::max<int64_t>(1, kPointwiseGrain / g.nx), [&](int64_t r0, int64_t r1) {
    std::vector<float> scratch(static_cast<size_t>(g.nx));
    for (int64_t r = r0; r < r1; ++r) part[static_cast<size_t>(r)] = f(r, scratch.data());
  });
  double s = 0.0;
  for (double v : part) s += v;
  return s;
}

// 1/2 M (dx - mf)^2 for one voxel (M = 0 or 1; mf = M f).
inline double half_data_residual(uint8_t m, float dx, float mf) {
  if (m == 0) return 0.0;
  const double r = static_cast<double>(dx) - mf;
  return 0.5 * r * r;
}

// The TV refinement of core/qsm/refine.h: ADMM on the padded grid.
void refine_chi_tv(const float* field, const float* chi_net, const uint8_t* mask, const Dims3& dims,
                   const Vec3& voxel_mm, const Vec3& b0_dir, const RefineOptions& opt, float* chi,
                   std::vector<double>* objective) {
  // (gradient_symbol_sq below refuses a voxel size <= 0.)
  const int64_t pad = opt.pad;
  const Dims3 g = dims.padded(pad);
  const auto n = static_cast<size_t>(g.numel());
  const auto nh = static_cast<size_t>(g.half_numel());
  const auto nv = static_cast<int64_t>(n);
  const auto rho_v = static_cast<float>(kRefineTvRhoData);
  const auto rho_z = static_cast<float>(kRefineTvRhoOverAlpha * opt.tv);
  const auto mu = static_cast<float>(opt.lambda);
  const auto alpha = static_cast<float>(opt.tv);
  const float thresh = alpha / rho_z;
  const float inv_h[3] = {static_cast<float>(1.0 / voxel_mm[0]),
                          static_cast<float>(1.0 / voxel_mm[1]),
                          static_cast<float>(1.0 / voxel_mm[2])};

  // On the padded grid: chi_net, M (0 in the padding) and M f.
  std::vector<float> net(n), mf(n, 0.0f);
  pad_into(chi_net, dims, pad, net.data());
  std::vector<uint8_t> m(n, 0);
  for (int64_t z = 0; z < dims.nz; ++z)
    for (int64_t y = 0; y < dims.ny; ++y)
      for (int64_t x = 0; x < dims.nx; ++x) {
        const int64_t i = (z * dims.ny + y) * dims.nx + x;
        const auto p = static_cast<size_t>(((z + pad) * g.ny + y + pad) * g.nx + x + pad);
        m[p] = (mask == nullptr || mask[i] != 0) ? 1 : 0;
        mf[p] = m[p] ? field[i] : 0.0f;
      }

  // Two transforms: fa takes v - u_v in and gives D chi out, fb takes
  // G^H (z - u_z) + (lambda / rho_z) chi_net in (the prior rides along with
  // the TV term, so its spectrum needs no array of its own) and gives chi out.
  Fft3 fa(g, fft_threads()), fb(g, fft_threads());
  const std::vector<float> d = dipole_kernel(g, voxel_mm, b0_dir, opt.k0_value);
  const float prior_weight = mu / rho_z;
  std::vector<float> inv_den(nh);
  {
    const std::vector<float> g2 = gradient_symbol_sq(g, voxel_mm);
    std::memcpy(fb.real(), net.data(), sizeof(float) * n);
    fb.forward();
    for (size_t k = 0; k < nh; ++k) {
      // > 0: check() keeps mu a normal float and rho_z finite
      inv_den[k] = 1.0f / (rho_v * d[k] * d[k] + rho_z * g2[k] + mu);
      fa.spectrum()[k] = fb.spectrum()[k] * d[k];
    }
    fa.inverse();  // D chi_net
  }

  // The data step: reads D chi in fa.real(), updates u_v and leaves v - u_v
  // there for the next chi step; returns 1/2 ||M (D chi - f)||^2.
  std::vector<float> uv(n, 0.0f);
  const auto data_step = [&]() {
    float* a = fa.real();
    return parallel_sum(nv, [&](int64_t i0, int64_t i1) {
      double acc = 0.0;
      for (int64_t i = i0; i < i1; ++i) {
        const float dx = a[i];
        const float p = dx + uv[i];
        const float v = (mf[i] + rho_v * p) / (static_cast<float>(m[i]) + rho_v);
        uv[i] = p - v;
        a[i] = v - uv[i];
        acc += half_data_residual(m[i], dx, mf[i]);
      }
      return acc;
    });
  };
  // The TV step: reads chi, updates u_z and keeps s = z - u_z, what the
  // chi step needs; returns alpha ||G chi||_1 + lambda/2 ||chi - chi_net||^2.
  std::vector<std::vector<float>> uz(3, std::vector<float>(n, 0.0f)), s = uz;
  const auto tv_step = [&](const float* x) {
    return sum_over_rows(g, [&](int64_t r, float* grad) {
      double tv = 0.0, pr = 0.0;
      const int64_t i0 = r * g.nx;
      for (int a = 0; a < 3; ++a) {
        forward_difference_row(x, g, r, a, inv_h[a], grad);
        float* ua = uz[static_cast<size_t>(a)].data() + i0;
        float* sa = s[static_cast<size_t>(a)].data() + i0;
        for (int64_t i = 0; i < g.nx; ++i) {
          tv += std::fabs(grad[i]);
          const float q = grad[i] + ua[i];
          const float zi = q > thresh ? q - thresh : (q < -thresh ? q + thresh : 0.0f);
          ua[i] = q - zi;
          sa[i] = zi - ua[i];
        }
      }
      for (int64_t i = i0; i < i0 + g.nx; ++i) {
        const double e = static_cast<double>(x[i]) - net[static_cast<size_t>(i)];
        pr += e * e;
      }
      return alpha * tv + 0.5 * mu * pr;
    });
  };

  // J before the first iteration and after each (refine_diverged_at).
  std::vector<double> trace;
  trace.reserve(static_cast<size_t>(opt.iterations) + 1);
  // Start: chi = chi_net, v = D chi_net (fa.real() holds v - u_v with
  // u_v = 0), z = G chi_net (s = z with u_z = 0).
  {
    const float* a = fa.real();
    double j = parallel_sum(nv, [&](int64_t i0, int64_t i1) {
      double acc = 0.0;
      for (int64_t i = i0; i < i1; ++i) acc += half_data_residual(m[i], a[i], mf[i]);
      return acc;
    });
    j += sum_over_rows(g, [&](int64_t r, float*) {
      double tv = 0.0;
      for (int a = 0; a < 3; ++a) {
        float* sa = s[static_cast<size_t>(a)].data() + r * g.nx;
        forward_difference_row(net.data(), g, r, a, inv_h[a], sa);
        for (int64_t i = 0; i < g.nx; ++i) tv += std::fabs(sa[i]);
      }
      return alpha * tv;
    });
    trace.push_back(j);
  }
  if (opt.iterations == 0) std::memcpy(fb.real(), net.data(), sizeof(float) * n);
  for (int it = 0; it < opt.iterations; ++it) {
    // fb = G^H (z - u_z) + (lambda / rho_z) chi_net
    sum_over_rows(g, [&](int64_t r, float*) {
      float* acc = fb.real() + r * g.nx;
      const float* nr = net.data() + r * g.nx;
      for (int64_t i = 0; i < g.nx; ++i) acc[i] = prior_weight * nr[i];
      for (int a = 0; a < 3; ++a)
        add_adjoint_difference_row(s[static_cast<size_t>(a)].data(), g, r, a, inv_h[a], acc);
      return 0.0;
    });
    fa.forward();
    fb.forward();
    std::complex<float>* sa = fa.spectrum();
    std::complex<float>* sb = fb.spectrum();
    parallel_for(static_cast<int64_t>(nh), kPointwiseGrain, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const std::complex<float> c = (rho_v * d[static_cast<size_t>(k)] * sa[k] + rho_z * sb[k]) *
                                      inv_den[static_cast<size_t>(k)];
        sb[k] = c;
        sa[k] = c * d[static_cast<size_t>(k)];
      }
    });
    fa.inverse();  // D chi
    fb.inverse();  // chi
    const double jd = data_step();
    const double jr = tv_step(fb.real());
    trace.push_back(jd + jr);
    if (const int at = refine_diverged_at(trace)) fail_refine_diverged(trace, at, opt);
  }
  if (objective) *objective = trace;
  crop_from(fb.real(), dims, pad, chi);
}

}  // namespace

int refine_diverged_at(const std::vector<double>& objective) {
  if (objective.empty()) return 0;
  const double start = objective.front();
  for (size_t i = 1; i < objective.size(); ++i)
    if (!std::isfinite(objective[i]) || (start > 0 && objective[i] > kRefineDivergence * start))
      return static_cast<int>(i);
  return 0;
}

void fail_refine_diverged(const std::vector<double>& objective, int at, const RefineOptions& opt) {
  fail("the refinement diverged at iteration ", at, ": its objective went from ", objective.front(),
       " to ", objective[static_cast<size_t>(at)], " (TV alpha ", opt.tv, ", lambda ", opt.lambda,
       "); weights this far from the defaults overflow its float arithmetic: use smaller ones, "
       "or no refinement");
}

double refine_lambda_for_noise(double noise_std_ppm) {
  const double r = noise_std_ppm / kRefineNetErrorPpm;
  return std::max(kRefineLambda, r * r);
}

double refine_objective(const float* chi, const float* field, const float* chi_net,
                        const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
                        const Vec3& b0_dir, const RefineOptions& opt) {
  check(opt);
  DipoleOp op(dims, voxel_mm, b0_dir, opt.k0_value, opt.pad, mask);
  std::vector<float> tmp(static_cast<size_t>(dims.numel()));
  return op.objective(chi, field, chi_net, opt.lambda, tmp.data());
}

void refine_chi(const float* field, const float* chi_net, const uint8_t* mask, const Dims3& dims,
                const Vec3& voxel_mm, const Vec3& b0_dir, const RefineOptions& opt, float* chi,
                std::vector<double>* objective) {
  check(opt);
  if (opt.tv > 0.0) {
    refine_chi_tv(field, chi_net, mask, dims, voxel_mm, b0_dir, opt, chi, objective);
    return;
  }
  const size_t n = static_cast<size_t>(dims.numel());
  DipoleOp op(dims, voxel_mm, b0_dir, opt.k0_value, opt.pad, mask);
  std::vector<float> net(chi_net, chi_net + n);  // chi may alias chi_net
  std::vector<float> x = net, r(n), p(n), ap(n), tmp(n);

  // r = b - A x0 = D M (f - D chi_net), since the prior term vanishes at x0 = chi_net.
  op.apply(x.data(), tmp.data());
  // dx = D x inside the mask, for the objective: kept up to date from the
  // M D p that each CG step computes anyway (dx += alpha M D p), so tracing J
  // costs no FFT (it cost a third padded FFT pair per iteration before).
  // Voxels outside the mask keep D chi_net there; the objective never reads them.
  std::vector<double> dx;
  if (objective) dx.assign(tmp.begin(), tmp.end());
  const auto nv = static_cast<int64_t>(n);
  for_each_voxel(nv, [&](int64_t i) { tmp[i] = field[i] - tmp[i]; });
  op.masked(tmp.data());
  op.apply(tmp.data(), r.data());
  p = r;
  double rr = dot(r, r);
  if (objective) {
    objective->clear();
    objective->push_back(op.objective_given(dx.data(), x.data(), field, net.data(), opt.lambda));
  }
  for (int it = 0; it < opt.iterations && rr > 0.0; ++it) {
    op.normal(p.data(), opt.lambda, tmp.data(), ap.data());  // tmp = M D p
    const double pap = dot(p, ap);
    if (!(pap > 0.0)) break;  // A is positive definite; this only guards round-off at convergence
    const float alpha = static_cast<float>(rr / pap);
    for_each_voxel(nv, [&](int64_t i) {
      x[i] += alpha * p[i];
      r[i] -= alpha * ap[i];
    });
    const double rr_new = dot(r, r);
    if (!std::isfinite(rr_new))
      fail("the refinement diverged at iteration ", it + 1, ": its residual is ", rr_new,
           " (lambda ", opt.lambda, "); use a smaller lambda, or no refinement");
    const float beta = static_cast<float>(rr_new / rr);
    rr = rr_new;
    for_each_voxel(nv, [&](int64_t i) { p[i] = r[i] + beta * p[i]; });
    if (objective) {
      for_each_voxel(nv, [&](int64_t i) { dx[i] += static_cast<double>(alpha) * tmp[i]; });
      objective->push_back(op.objective_given(dx.data(), x.data(), field, net.data(), opt.lambda));
      if (const int at = refine_diverged_at(*objective)) fail_refine_diverged(*objective, at, opt);
    }
  }
  std::copy(x.begin(), x.end(), chi);
}

}  // namespace dq
